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

$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const request = { prompt: $("edit-prompt").value, target: $("edit-target").value, async: true };
  if ($("edit-subject").value.trim()) request.subject = $("edit-subject").value.trim();
  $("edit-button").disabled = true;
  try {
    const job = await api("POST", "/v1/edits", request);
    await follow(job);
  } catch (error) {
    showError(error);
  } finally {
    $("edit-button").disabled = false;
  }
});

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

async function refresh() {
  try {
    const data = await api("GET", "/v1/edits?history=1");
    const list = $("history");
    list.replaceChildren();
    for (const chain of data.chains) {
      const answering = chain[chain.length - 1];
      const item = document.createElement("li");
      item.dataset.edit = answering.id;
      const text = document.createElement("span");
      text.textContent = `${answering.id}: ${answering.prompts[0]} → ${answering.target} `;
      item.appendChild(text);
      if (chain.length > 1) {
        const older = document.createElement("span");
        older.className = "chain";
        older.textContent = "(supersedes " + chain.slice(0, -1).map((e) => `${e.id} "${e.target}"`).join(", ") + ") ";
        item.appendChild(older);
      }
      const button = document.createElement("button");
      button.className = "undo";
      button.textContent = "undo";
      button.dataset.undo = answering.id;
      button.addEventListener("click", () => undo(answering.id));
      item.appendChild(button);
      list.appendChild(item);
    }
    liveEdits.push([Date.now(), data.edits.length]);
    if (liveEdits.length > 200) liveEdits.shift();
    $("status").textContent = `${data.edits.length} live edits`;
    draw();
  } catch (error) {
    $("status").textContent = "error: " + error.message;
  }
}

function draw() {
  const canvas = $("chart");
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 8;
  g.clearRect(0, 0, w, h);
  if (liveEdits.length) {
    const most = Math.max(1, ...liveEdits.map((p) => p[1]));
    const t0 = liveEdits[0][0], t1 = Math.max(t0 + 1, liveEdits[liveEdits.length - 1][0]);
    g.strokeStyle = "#2f6fde"; g.lineWidth = 2; g.beginPath();
    liveEdits.forEach(([t, n], i) => {
      const x = pad + (w - 2 * pad) * (t - t0) / (t1 - t0), y = h - pad - (h - 2 * pad) * n / most;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
  if (recentAsks.length) {
    const share = recentAsks.filter(Boolean).length / recentAsks.length;
    g.fillStyle = "#e08a00";
    g.fillRect(w - pad - 24, h - pad - (h - 2 * pad) * share, 24, (h - 2 * pad) * share);
  }
}

refresh();
setInterval(refresh, 5000);  // edits made elsewhere (the CLI, another client) show up too
