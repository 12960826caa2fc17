"use strict";
// The console: one page over the node's API (/api/v1). No framework and nothing from a CDN:
// everything here is served by the node itself.

const COMMANDS = {
  start: (m, n) => `Start ${m} on ${n}: it serves or follows, as its peer decides.`,
  stop: (m, n) => `Stop ${m} on ${n}: the application stops there; if ${n} serves, the up-to-date peer takes over.`,
  restart: (m, n) => `Restart ${m} on ${n}: stop, then start again.`,
  swap: (m, n) => `Swap ${m}: the serving node hands over to the other once both copies are in sync; the application moves, no acknowledged write is lost.`,
  prim: (m, n) => `Make ${n} serve ${m}. Refused if its copy may be stale.`,
  second: (m, n) => `${n} steps down for ${m}: the up-to-date peer serves, ${n} follows.`,
};
const GOOD = ["PRIM", "ALONE"];
let session = null;
let timer = null;
let logFollow = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (session && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body ? JSON.stringify(body) : undefined,
  });
  let answer = {};
  try { answer = await response.json(); } catch (e) { answer = {}; }
  if (response.status === 401 && path !== "/api/v1/session") showLogin();
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.classList.add("shown");
  clearTimeout(box.hideTimer);
  box.hideTimer = setTimeout(() => box.classList.remove("shown"), 6000);
}

function showLogin() {
  session = null;
  clearInterval(timer);
  $("login").hidden = false;
  $("cluster").hidden = true;
  $("logview").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
}

function showCluster() {
  $("login").hidden = true;
  $("cluster").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `${session.user} (${session.role}) on node ${session.node}`;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, 2000);
}

function colour(failover, streams) {
  if (!failover || !failover.running) return "unknown";
  if (GOOD.includes(failover.state)) return "ok";
  if (failover.state === "SECOND") {
    const syncing = streams.some((s) => s.resync || (s.replication && s.replication !== "in sync"));
    return syncing ? "resync" : "ok";
  }
  return "down";
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function streamLine(stream) {
  if (!stream.running) return el("div", { class: "reason", text: `copy ${stream.index}: not running` });
  const box = el("div", { class: "stream", "data-stream": String(stream.index) });
  let text = `copy ${stream.index}: ${stream.role}, ${stream.replication}`;
  if (stream.replication === "alone" && stream.reason) text += ` (${stream.reason})`;
  box.append(el("div", { class: "reason", text }));
  if (stream.resync) {
    const done = stream.resync.bytes_done || 0;
    const total = stream.resync.bytes_total || 0;
    const bar = el("progress", { max: String(total || 1), value: String(done), class: "resync" });
    box.append(bar, el("div", { class: "reason", text: `${stream.resync.how}: ${Math.round(done / 1048576)} of ${Math.round(total / 1048576)} MiB, ${stream.resync.paths_done}/${stream.resync.paths_total} files` }));
  }
  return box;
}

function nodeCard(module, nodeName, found) {
  const card = el("div", { class: "node", "data-node": nodeName, "data-module": module });
  card.append(el("h3", { text: `node ${nodeName}` }));
  if (found.error) {
    card.append(el("span", { class: "state unknown", "data-state": "UNKNOWN", text: "?" }));
    card.append(el("p", { class: "reason", text: found.error }));
    return card;
  }
  const entry = (found.modules || {})[module];
  const failover = entry ? entry.failover : null;
  const streams = entry ? entry.streams : [];
  const state = failover && failover.running ? failover.state : "?";
  card.append(el("span", { class: `state ${colour(failover, streams)}`, "data-state": state, text: state }));
  if (failover && failover.running) {
    card.append(el("p", { class: "reason", text: `${failover.reason || ""} (for ${ago(failover.for_s)})` }));
    if (failover.vip) card.append(el("p", { class: "reason", text: `VIP ${failover.vip}: ${failover.vip_held ? "held here" : "not here"}` }));
  } else if (failover) {
    card.append(el("p", { class: "reason", text: failover.reason || "not running" }));
  }
  for (const stream of streams) card.append(streamLine(stream));
  const menu = el("div", { class: "menu" });
  if (session.role === "admin") {
    for (const command of Object.keys(COMMANDS)) {
      const button = el("button", { "data-command": command, text: command });
      button.addEventListener("click", () => confirmCommand(module, nodeName, command));
      menu.append(button);
    }
  }
  for (const kind of ["module", "app"]) {
    const button = el("button", { "data-log": kind, text: kind === "module" ? "module log" : "app log" });
    button.addEventListener("click", () => openLog(module, nodeName, kind));
    menu.append(button);
  }
  if (session.role === "admin") {
    menu.append(el("a", { href: `/api/v1/snapshot?node=${encodeURIComponent(nodeName)}`, class: "snapshot", "data-snapshot": nodeName, text: "snapshot" }));
  }
  card.append(menu);
  return card;
}

async function refresh() {
  let answer;
  try {
    answer = await api("GET", "/api/v1/cluster");
    $("cluster-error").textContent = "";
  } catch (error) {
    $("cluster-error").textContent = `cannot read the cluster: ${error.message}`;
    return;
  }
  const names = new Set();
  for (const found of Object.values(answer.nodes)) for (const m of Object.keys(found.modules || {})) names.add(m);
  const box = $("modules");
  box.replaceChildren();
  if (names.size === 0) box.append(el("p", { text: "no module has run on these nodes yet" }));
  for (const module of [...names].sort()) {
    const card = el("article", { class: "module", "data-module": module });
    card.append(el("h2", { text: module }));
    const nodes = el("div", { class: "nodes" });
    for (const [nodeName, found] of Object.entries(answer.nodes)) nodes.append(nodeCard(module, nodeName, found));
    card.append(nodes);
    box.append(card);
  }
}

function confirmCommand(module, nodeName, command) {
  const dialog = $("confirm");
  $("confirm-text").textContent = COMMANDS[command](module, nodeName);
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    try {
      const done = await api("POST", `/api/v1/modules/${encodeURIComponent(module)}/${command}`, { node: nodeName });
      notice(`${module} ${command}: done on ${done.node} (${done.failover.state})`);
    } catch (error) {
      notice(`${module} ${command} refused: ${error.message}`);
    }
    refresh();
  };
  dialog.returnValue = "";
  dialog.showModal();
}

async function openLog(module, nodeName, kind) {
  if (logFollow) logFollow.stopped = true;
  const follow = { stopped: false };
  logFollow = follow;
  $("logview").hidden = false;
  $("log-title").textContent = `${kind === "app" ? "application" : "module"} log of ${module} on ${nodeName}`;
  const lines = $("log-lines");
  lines.textContent = "";
  const base = `/api/v1/modules/${encodeURIComponent(module)}/log?kind=${kind}&node=${encodeURIComponent(nodeName)}`;
  let next;
  try {
    const page = await api("GET", `${base}&lines=200`);
    lines.textContent = page.lines.join("\n") + (page.lines.length ? "\n" : "");
    next = page.next;
  } catch (error) {
    lines.textContent = `cannot read the log: ${error.message}`;
    return;
  }
  lines.scrollTop = lines.scrollHeight;
  while (!follow.stopped) {
    if (!$("log-follow").checked) { await new Promise((r) => setTimeout(r, 1000)); continue; }
    try {
      const page = await api("GET", `${base}&after=${next}&wait=10`);
      if (follow.stopped) break;
      if (page.rotated) lines.textContent = "";
      if (page.lines.length) {
        lines.textContent += page.lines.join("\n") + "\n";
        lines.scrollTop = lines.scrollHeight;
      }
      next = page.next;
    } catch (error) {
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

async function start() {
  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    try {
      session = await api("POST", "/api/v1/session", { user: $("user").value, password: $("password").value });
      $("password").value = "";
      showCluster();
    } catch (error) {
      $("login-error").textContent = error.message;
    }
  });
  $("logout").addEventListener("click", async () => {
    try { await api("DELETE", "/api/v1/session"); } catch (e) { /* gone already */ }
    showLogin();
  });
  $("log-close").addEventListener("click", () => {
    if (logFollow) logFollow.stopped = true;
    $("logview").hidden = true;
  });
  try {
    session = await api("GET", "/api/v1/session");
    if (!session.csrf) throw new Error("no session");
    showCluster();
  } catch (error) {
    showLogin();
  }
}

document.addEventListener("DOMContentLoaded", start);
