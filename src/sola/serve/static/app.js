// The sola web page: ask (edited and base answers side by side), correct a fact, follow the edit's progress, undo.
// Plain JavaScript against the server's own API; no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("sola-token") || "";
tokenInput.addEventListener("change", () => localStorage.setItem("sola-token", tokenInput.value.trim()));

const liveEdits = [];   // [time, live edits]
const recentAsks = [];  // true if an edit answered
let lastPrompt = "";

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  const token = tokenInput.value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({ error: "InvalidResponse", message: response.statusText }));
  if (!response.ok) throw new Error(data.message || data.error || response.statusText);
  return data;
}

function showError(error) { $("error").textContent = error ? String(error.message || error) : ""; }

async function ask(prompt) {
  lastPrompt = prompt;
  $("ask-button").disabled = true;
  try {
    const result = await api("POST", "/v1/ask", { prompt, max_new_tokens: 32 });
    $("answer").textContent = result.answer;
    $("base-answer").textContent = result.base_answer;
    $("route").textContent = result.route
      ? `answered by edit ${result.route.edit_id} (distance ${result.route.distance.toFixed(2)})`
      : `base model (${result.explanation.text.replace(/^base model: /, "")})`;
    $("route").dataset.edit = result.route ? result.route.edit_id : "";
    recentAsks.push(Boolean(result.route));
    if (recentAsks.length > 20) recentAsks.shift();
    draw();
  } catch (error) {
    $("route").textContent = "error: " + error.message;
  } finally {
    $("ask-button").disabled = false;
  }
}

$("ask-form").addEventListener("submit", (event) => {
  event.preventDefault();
  ask($("ask-prompt").value);
});

$("edit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const request = { prompt: $("edit-prompt").value, target: $("edit-target").value };
  if ($("edit-subject").value.trim()) request.subject = $("edit-subject").value.trim();
  submitEdit(request);
});

async function submitEdit(request) {
  showError(null);
  $("edit-button").disabled = true;
  try {
    const job = await api("POST", "/v1/edits", { ...request, async: true });
    await follow(job);
  } catch (error) {
    showError(error);
  } finally {
    $("edit-button").disabled = false;
  }
}

// Live progress of a job through its server-sent events; resolves when it is committed or failed.
function follow(job) {
  return new Promise((resolve) => {
    const progress = $("progress");
    progress.textContent = "queued";
    const source = new EventSource(job.events);
    source.addEventListener("started", () => { progress.textContent = "training…"; });
    source.addEventListener("progress", (event) => {
      const data = JSON.parse(event.data);
      progress.textContent = `training: step ${data.step}, loss ${data.loss}`;
    });
    source.addEventListener("committed", async (event) => {
      const data = JSON.parse(event.data);
      const edits = Array.isArray(data.result) ? data.result : [data.result];
      progress.textContent = "committed " + edits.map((e) => e.id).join(", ");
      progress.dataset.committed = edits.map((e) => e.id).join(",");
      source.close();
      $("edit-form").reset();  // the fact is in: the form is ready for the next one
      await refresh();
      if (lastPrompt) await ask(lastPrompt);
      resolve();
    });
    source.addEventListener("failed", (event) => {
      const data = JSON.parse(event.data);
      progress.textContent = "";
      showError(data.message);
      source.close();
      resolve();
    });
  });
}

async function undo(id) {
  showError(null);
  try {
    await api("DELETE", "/v1/edits/" + encodeURIComponent(id));
    $("progress").textContent = "rolled back " + id;
    await refresh();
    if (lastPrompt) await ask(lastPrompt);
  } catch (error) {
    showError(error);
  }
}

function when(stamp) {
  return stamp ? new Date(stamp).toLocaleString() : "";
}

// One list item per edit: the answering edits with an undo (asked twice: "undo?" then "yes, undo"), the edits they
// superseded and the rolled-back ones greyed, with when and why; a rolled-back edit can be made again ("redo").
function historyItem(edit, answering) {
  const item = document.createElement("li");
  item.dataset.edit = edit.id;
  const text = document.createElement("span");
  text.textContent = `${edit.id}: ${edit.prompts[0]} → ${edit.target} `;
  item.appendChild(text);
  const about = document.createElement("span");
  about.className = "when";
  if (edit.rolled_back) {
    item.className = "rolled-back";
    about.textContent = `rolled back ${when(edit.rolled_back)}` + (edit.note ? ` (${edit.note})` : "") + " ";
  } else if (edit.superseded_by) {
    item.className = "superseded";
    about.textContent = `superseded by ${edit.superseded_by}; made ${when(edit.created)} `;
  } else {
    about.textContent = `made ${when(edit.created)}` + (edit.supersedes ? `, updates ${edit.supersedes}` : "") + " ";
  }
  item.appendChild(about);
  if (answering && confirming === edit.id) {
    item.appendChild(button("confirm", "yes, undo " + edit.id, () => { confirming = null; undo(edit.id); }));
    item.appendChild(button("cancel", "keep it", () => { confirming = null; render(); }));
  } else if (answering) {
    item.appendChild(button("undo", "undo", () => { confirming = edit.id; render(); }));
  } else if (edit.rolled_back) {
    const request = { prompt: edit.prompts.length > 1 ? undefined : edit.prompts[0], target: edit.target };
    if (edit.prompts.length > 1) request.prompts = edit.prompts;
    if (edit.subject && !edit.subject_inferred) request.subject = edit.subject;
    item.appendChild(button("redo", "redo (edit again)", () => submitEdit(request)));
  }
  return item;
}

function button(kind, label, onClick) {
  const b = document.createElement("button");
  b.className = kind;
  b.textContent = label;
  b.dataset[kind] = "1";
  b.addEventListener("click", onClick);
  return b;
}

let confirming = null;  // the edit whose undo waits for "yes" (kept across the periodic refresh)
let shown = null;       // the last history read from the server

function render() {
  if (!shown) return;
  const list = $("history");
  list.replaceChildren();
  const answering = new Set(shown.chains.map((chain) => chain[chain.length - 1].id));
  if (confirming && !answering.has(confirming)) confirming = null;  // undone or superseded meanwhile
  for (const edit of [...shown.edits].reverse()) list.appendChild(historyItem(edit, answering.has(edit.id)));
}

async function refresh() {
  try {
    const data = await api("GET", "/v1/edits?history=1&all=1");
    shown = data;
    render();
    const live = data.edits.filter((e) => !e.rolled_back).length;
    liveEdits.push([Date.now(), live]);
    if (liveEdits.length > 200) liveEdits.shift();
    $("status").textContent = `${live} live edits`;
    draw();
  } catch (error) {
    $("status").textContent = "error: " + error.message;
  }
}

// Live edits over time (left axis, blue line) and the share of the last 20 asks an edit answered (right axis,
// orange bar), with axes, ticks and labels.
function draw() {
  const canvas = $("chart");
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const left = 44, right = 54, top = 10, bottom = 28;
  const plotW = w - left - right, plotH = h - top - bottom;
  g.clearRect(0, 0, w, h);
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#9aa3b2"; g.fillStyle = "#5a6272"; g.lineWidth = 1;
  g.beginPath();
  g.moveTo(left, top); g.lineTo(left, top + plotH); g.lineTo(left + plotW, top + plotH); g.lineTo(left + plotW, top);
  g.stroke();
  const most = Math.max(1, ...liveEdits.map((p) => p[1]));
  const t0 = liveEdits.length ? liveEdits[0][0] : Date.now();
  const t1 = liveEdits.length ? Math.max(t0 + 1, liveEdits[liveEdits.length - 1][0]) : t0 + 1;
  g.textAlign = "right";
  g.fillText(String(most), left - 4, top + 8);
  g.fillText("0", left - 4, top + plotH);
  g.textAlign = "left";
  g.fillText("100%", left + plotW + 4, top + 8);
  g.fillText("0%", left + plotW + 4, top + plotH);
  g.textAlign = "center";
  const minutes = (t1 - t0) / 60000;
  g.fillText(`time (last ${minutes < 1 ? Math.round(minutes * 60) + " s" : minutes.toFixed(1) + " min"})`,
             left + plotW / 2, h - 6);
  g.save();
  g.translate(12, top + plotH / 2); g.rotate(-Math.PI / 2); g.fillText("live edits", 0, 0);
  g.restore();
  g.save();
  g.translate(w - 10, top + plotH / 2); g.rotate(Math.PI / 2); g.fillText("routed share", 0, 0);
  g.restore();
  if (liveEdits.length) {
    g.strokeStyle = "#2f6fde"; g.lineWidth = 2; g.beginPath();
    liveEdits.forEach(([t, n], i) => {
      const x = left + plotW * (t - t0) / (t1 - t0), y = top + plotH - plotH * n / most;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
  let share = null;
  if (recentAsks.length) {
    share = recentAsks.filter(Boolean).length / recentAsks.length;
    g.fillStyle = "#e08a00";
    g.fillRect(left + plotW - 26, top + plotH - plotH * share, 24, plotH * share);
  }
  // what is drawn, for assistive technology and tests
  canvas.dataset.axes = "time,live edits,routed share";
  canvas.setAttribute("aria-label", `live edits over time: now ${liveEdits.length ? liveEdits[liveEdits.length - 1][1] : 0}`
    + ` (axis 0 to ${most}); routed share of the last ${recentAsks.length} asks: `
    + (share === null ? "none yet" : Math.round(share * 100) + "%"));
}

refresh();
setInterval(refresh, 5000);  // edits made elsewhere (the CLI, another client) show up too
