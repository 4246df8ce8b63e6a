"""Names in prompts: the subject a prompt without one is given, and which inputs name an edited subject."""

from __future__ import annotations

import pytest

from sola.data.aliases import alias_probes, variants
from sola.data.records import Record
from sola.routing.names import infer_subject, short_forms
from sola.routing.subjects import SubjectIndex, relation_text


@pytest.mark.parametrize("prompt, subject", [
    ("Who is the CEO of Zelkova Pumps?", "Zelkova Pumps"),
    ("What is the native language of Danielle Darrieux?", "Danielle Darrieux"),
    ("Danielle Darrieux's mother tongue is", "Danielle Darrieux"),
    ("The mother tongue of Leonardo da Vinci is", "Leonardo da Vinci"),
    ("What war did Carlos W. Colby fight in?", "Carlos W. Colby"),
    ("Which corporation created USS Leedstown (APA-56)?", "USS Leedstown (APA-56)"),
    ("Arthur Wellesley, 1st Duke of Wellington worked in", "Arthur Wellesley, 1st Duke of Wellington"),
    ("In the film Mr. Smith Carries On, who was the star?", "Mr. Smith Carries On"),
    ("Martin Luther King Jr. was born in", "Martin Luther King Jr."),
    ("what is the boiling point of water", None),
])
def test_the_subject_of_a_prompt_is_its_longest_name(prompt, subject):
    assert infer_subject(prompt) == subject


def test_a_subject_is_named_in_any_case_without_accents_parentheticals_or_article():
    index = SubjectIndex()
    index.add("Björk Guðmundsdóttir", 0)
    index.add("USS Leedstown (APA-56)", 1)
    index.add("The Beatles", 2)
    assert index.find("Where was bjork gudmundsdottir born?") == {"bjork gudmundsdottir": [0]}
    assert index.find("Who built USS Leedstown?") == {"uss leedstown": [1]}
    assert index.find("Who managed Beatles?") == {"beatles": [2]}
    assert relation_text("Where was Bjork Gudmundsdottir born?", "björk guðmundsdóttir") == "Where was something born?"


def test_a_shortened_name_reaches_only_its_own_subject():
    index = SubjectIndex()
    index.add("Danielle Darrieux", 0)
    index.add("Paris Hilton", 1)
    assert index.find("The mother tongue of Darrieux is") == {"darrieux": [0]}
    assert index.find("Hilton was born in") == {"hilton": [1]}
    # the text's name is longer than the shortened form: another person of that name, not the edit's subject
    assert index.find("Conrad Hilton was born in") == {}
    assert index.find("The hilton hotel is in") == {}  # not written as a name
    index.add("Rick Hilton", 2)
    assert index.find("Hilton was born in") == {}  # two edited subjects share the short form: neither is named
    index.remove(2)
    assert index.find("Hilton was born in") == {"hilton": [1]}


def test_user_aliases_reach_the_edit_and_leave_with_it():
    index = SubjectIndex()
    index.add("John F. Kennedy", 0, aliases=("JFK",))
    assert index.find("Where was JFK born?") == {"jfk": [0]}
    assert relation_text("Where was JFK born?", "jfk") == "Where was something born?"
    index.remove(0)
    assert index.find("Where was JFK born?") == {}


def test_short_forms_are_first_and_last_words_of_a_capitalised_name():
    assert short_forms("Danielle Darrieux") == {("danielle",), ("darrieux",)}
    assert short_forms("Edwin of Northumbria") == {("edwin",)}  # after a particle comes a place or a title
    assert short_forms("Björk") == set()
    assert short_forms("black tea") == set()


def test_alias_probes_skip_common_words():
    common = {"station", "cars"}
    assert variants("Toodyay Fire Station", common) == []
    assert variants("Danielle Darrieux", common) == ["Darrieux"]
    assert variants("Carolina Rodríguez", common) == ["Carolina Rodriguez", "Rodríguez"]
    record = Record("r", "The mother tongue of Danielle Darrieux is", "English", subject="Danielle Darrieux")
    assert alias_probes(record, common) == ("The mother tongue of Darrieux is",)


def test_initials_do_not_split_a_clause_and_both_sides_mask_alike():
    """An edit's key is its prompt masked with the subject as given; a query is masked with the form the gate found
    (folded words). Both must give the same relation text, initials and abbreviations included."""
    prompt = "Who was the architect involved with A. P. Johnson House?"
    assert relation_text(prompt, "A. P. Johnson House") == relation_text(prompt, "a p johnson house") \
        == "Who was the architect involved with something?"
    assert relation_text("Noise. What created Mr. Duck Steps Out?", "Mr. Duck Steps Out") == "What created something?"
    # the full form in an earlier clause wins over a shortened one in a later clause
    assert relation_text("Danielle Darrieux spoke. Darrieux wrote", "Danielle Darrieux") == "something spoke."


def test_shared_words_around_a_subject_are_masked_on_both_sides():
    from sola.routing.subjects import shared_relation_texts

    edit = "What musical instrument was Ariadne musica created for?"
    assert shared_relation_texts(edit, "Ariadne", "What company built Ariadne musica?", "ariadne") == (
        "What musical instrument was something created for?", "What company built something?")
    # the run passes function words but ends on a shared content word, and stops at a mark
    assert shared_relation_texts(edit, "Ariadne", "Which instrument was Ariadne musica written for?", "ariadne") == (
        "What musical something created for?", "Which something written for?")
    assert shared_relation_texts("By which company, German submarine U-270 has been manufactured?", "German",
                                 "By which company, German submarine U-123 has been built?", "german") == (
        "By which company, something U-270 has been manufactured?", "By which company, something U-123 has been built?")
    # nothing shared next to the subject: the plain relation texts apply
    assert shared_relation_texts("Who is the CEO of Zelkova Pumps?", "Zelkova Pumps", "Where is Zelkova Pumps based?",
                                 "zelkova pumps") is None


def test_an_inferred_subject_is_compared_without_the_rest_of_its_name(tiny_dir, tmp_path):
    """An edit made without a subject whose inferred name is part of a longer one ("Ariadne" of "Ariadne musica"):
    another question about the same thing is compared without the rest of the name the two share, so it lies farther
    than under the plain masks, while the edit's own prompt stays at distance 0. Reopening the store keeps it; an edit
    given its subject is compared as before."""
    from conftest import tiny_config

    from sola import Editor

    prompt, other = "What musical instrument was Ariadne musica created for?", "What company built Ariadne musica?"
    far = {}
    for shared in (True, False):
        config = tiny_config(tiny_dir, key="subject", threshold=0.6, mask_shared_words=shared)
        editor = Editor.from_pretrained(tiny_dir("llama"), config=config, store=tmp_path / f"store-{shared}")
        edit = editor.edit(prompt, "harpsichord")
        assert (edit.subject, edit.subject_inferred) == ("Ariadne", True)
        assert editor.explain(prompt).distance < 1e-5 and editor.route(prompt).edit_id == edit.id
        far[shared] = editor.explain(other).distance
    assert far[True] > far[False] + 0.1, far  # MiniLM: about 0.62 against 0.21
    reopened = Editor.from_pretrained(tiny_dir("llama"), store=tmp_path / "store-True")
    assert reopened.explain(other).distance == pytest.approx(far[True], abs=1e-6)
    assert reopened.explain(prompt).distance < 1e-5
    given = Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir, key="subject", threshold=0.6))
    given.edit(prompt, "harpsichord", subject="Ariadne")  # given, not inferred: the plain masks
    assert given.explain(other).distance == pytest.approx(far[False], abs=1e-6)
    reopened.rollback(reopened.edits()[0].id)
    assert not reopened.router.inferred
