// The control page: create a session, make it speak (text, file, microphone), interrupt,
// watch it, and see its events and live figures.
import { play, sendMicrophone, shapeFrame } from "/web/whep.js";

const $ = (id) => document.getElementById(id);
const state = { session: null, player: null, mic: null, ws: null, timer: null };
shapeFrame($("video"), $("video").parentElement);

$("apikey").value = localStorage.getItem("avatarcast.apikey") || "";
$("apikey").addEventListener("change", () => localStorage.setItem("avatarcast.apikey", $("apikey").value));
const key = () => $("apikey").value.trim();
const auth = () => (key() ? { Authorization: `Bearer ${key()}` } : {});

function log(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  const time = new Date().toLocaleTimeString();
  li.innerHTML = `<time>${time}</time> `;
  li.append(text);
  $("events").prepend(li);
  while ($("events").children.length > 200) $("events").lastChild.remove();
}

async function api(method, path, body, type = "application/json") {
  const init = { method, headers: { ...auth() } };
  if (body !== undefined) {
    init.body = type === "application/json" ? JSON.stringify(body) : body;
    init.headers["Content-Type"] = type;
  }
  const res = await fetch(path, init);
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.error?.message || `${method} ${path}: ${res.status}`);
  return data;
}

function enable(on) {
  for (const id of ["say", "interrupt", "upload", "mic"]) $(id).disabled = !on;
}

async function closeSession() {
  clearInterval(state.timer);
  state.ws?.close();
  await state.mic?.stop();
  await state.player?.stop();
  Object.assign(state, { player: null, mic: null, ws: null });
}

function link(href, label) {
  const a = document.createElement("a");
  a.href = href; a.target = "_blank"; a.textContent = label;
  return a;
}

async function createSession() {
  await closeSession();
  $("overlay").hidden = false;
  $("overlay").textContent = "starting…";
  try {
    const s = await api("POST", "/v1/sessions", { avatar: $("avatar").value || "default" });
    state.session = s;
    $("session").textContent = `session ${s.id}`;
    $("links").replaceChildren(
      link(s.view_url || `/view/${s.id}?token=${s.view_token}`, "viewer page"),
      link(s.obs_url || `/obs/${s.id}?token=${s.view_token}`, "OBS page"),
      link(`/obs/${s.id}?token=${s.view_token}&bg=00ff00`, "OBS page, green screen"),
    );
    log("info", `session ${s.id} created (${s.avatar})`);
    enable(true);
    openEvents(s);
    state.player = await play($("video"), { sessionId: s.id, token: s.view_token });
    $("video").requestVideoFrameCallback?.(() => { $("overlay").hidden = true; });
    state.timer = setInterval(refresh, 1000);
  } catch (err) {
    $("overlay").textContent = err.message;
    log("error", err.message);
  }
}

function openEvents(s) {
  let url = s.ws_url || `/v1/sessions/${s.id}/ws`;
  url = new URL(url, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  // A browser's WebSocket cannot send Authorization: the key goes as a subprotocol (not in
  // the URL, which proxies log). A key that is not a valid protocol name falls back to ?token=.
  const protocols = [];
  if (/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(key())) protocols.push("avatarcast", `avatarcast.bearer.${key()}`);
  else if (key()) url.searchParams.set("token", key());
  const ws = new WebSocket(url, protocols);
  ws.onmessage = (m) => {
    try {
      const e = JSON.parse(m.data);
      const extra = e.type === "playback_finished"
        ? ` after ${Number(e.position_s).toFixed(2)} s${e.interrupted ? " (interrupted)" : ""}` : "";
      log(e.type === "error" ? "error" : "event", `${e.type} ${e.utterance_id || e.message || ""}${extra}`);
    } catch (_) { /* binary */ }
  };
  ws.onclose = (e) => log(e.code >= 4000 ? "error" : "info", `event stream closed${e.reason ? `: ${e.reason}` : ""}`);
  state.ws = ws;
}

async function refresh() {
  const s = state.session;
  if (!s) return;
  try {
    const info = await api("GET", `/v1/sessions/${s.id}`);
    $("fig-state").textContent = info.state ?? "–";
    $("fig-state").className = info.state === "speaking" ? "speaking" : "";
    $("fig-viewers").textContent = info.viewers ?? "–";
    // Live streams only: queued text is written seconds ahead, which is no lag anyone hears.
    const ms = (value) => (value == null ? "–" : `${Number(value).toFixed(0)} ms`);
    $("fig-latency").textContent = ms(info.speech_to_mouth_ms_p95);
    $("fig-first-audible").textContent = ms(info.first_audible_ms_p95);
  } catch (err) {
    $("fig-state").textContent = "gone";
  }
  if (state.player) {
    const st = await state.player.stats();
    $("fig-fps").textContent = st.fps.toFixed(1);
    $("fig-rtt").textContent = st.rtt == null ? "–" : `${st.rtt.toFixed(0)} ms`;
  }
}

async function speak(body, type) {
  try {
    const r = await api("POST", `/v1/sessions/${state.session.id}/speak`, body, type);
    log("info", `queued ${r.utterance_id}`);
  } catch (err) { log("error", err.message); }
}

$("create").onclick = createSession;
$("say").onclick = () => {
  const text = $("text").value.trim();
  if (text) speak({ text }, "application/json");
};
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("say").click();
});
$("upload").onclick = () => {
  const f = $("file").files[0];
  if (f) speak(f, f.type || "application/octet-stream");
  else log("error", "choose an audio file first");
};
$("interrupt").onclick = async () => {
  try {
    const r = await api("POST", `/v1/sessions/${state.session.id}/interrupt`);
    log("info", `interrupted ${(r.interrupted || []).join(", ") || "nothing"}`);
  } catch (err) { log("error", err.message); }
};
$("listen").onchange = () => {
  $("video").muted = !$("listen").checked;
  $("video").play();
};
$("mic").onclick = async () => {
  if (state.mic) {
    await state.mic.stop();
    state.mic = null;
    $("mic").textContent = "Microphone on";
    $("mic-state").textContent = "off";
    $("mic").classList.remove("live");
    return;
  }
  try {
    $("mic-state").textContent = "connecting…";
    state.mic = await sendMicrophone({ sessionId: state.session.id, token: key() || undefined });
    $("mic").textContent = "Microphone off";
    $("mic").classList.add("live");
    $("mic-state").textContent = "live: the avatar speaks with your voice";
  } catch (err) {
    $("mic-state").textContent = "off";
    log("error", `microphone: ${err.message}`);
  }
};
addEventListener("pagehide", closeSession);
