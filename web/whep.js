// WHEP playback (draft-ietf-wish-whep) and the microphone uplink, for every page.
// Plain ES module: no build step, nothing from a CDN.

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function candidateFragment(pc, candidate) {
  const ice = pc.localDescription.sdp.match(/a=ice-ufrag:(.*)\r?\n/);
  const pwd = pc.localDescription.sdp.match(/a=ice-pwd:(.*)\r?\n/);
  let frag = "";
  if (ice) frag += `a=ice-ufrag:${ice[1]}\r\n`;
  if (pwd) frag += `a=ice-pwd:${pwd[1]}\r\n`;
  frag += `m=${candidate.sdpMid === "1" ? "audio" : "video"} 9 UDP/TLS/RTP/SAVPF 0\r\n`;
  frag += `a=mid:${candidate.sdpMid}\r\n`;
  frag += candidate.candidate ? `a=${candidate.candidate}\r\n` : "a=end-of-candidates\r\n";
  return frag;
}

// Offer `pc` to `url` (POST application/sdp), apply the answer, trickle later candidates
// with PATCH. Returns the resource URL (for DELETE).
async function negotiate(pc, url, token) {
  const pending = [];
  let resource = null;
  let etag = null;
  const trickle = (candidate) =>
    fetch(resource, {
      method: "PATCH",
      headers: { "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag || "*",
                 ...authHeaders(token) },
      body: candidateFragment(pc, candidate),
    }).catch(() => {});
  pc.addEventListener("icecandidate", (e) => {
    if (!e.candidate) return;
    if (resource) trickle(e.candidate);
    else pending.push(e.candidate);
  });
  await pc.setLocalDescription(await pc.createOffer());
  // Host candidates come in a few ms: wait briefly so most ride in the offer itself.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const done = () => pc.iceGatheringState === "complete" && resolve();
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 300);
  });
  pending.length = 0;
  for (;;) {
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...authHeaders(token) },
      body: pc.localDescription.sdp,
    });
    if (res.status === 409) {  // the session is starting: Retry-After says when to ask again
      const wait = Number(res.headers.get("Retry-After") || 1);
      await new Promise((r) => setTimeout(r, wait * 1000));
      continue;
    }
    if (res.status !== 201) {
      let message = `${res.status}`;
      try { message = (await res.json()).error.message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    resource = new URL(res.headers.get("Location"), url).toString();
    etag = res.headers.get("ETag");
    await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
    break;
  }
  for (const c of pending) trickle(c);
  return resource;
}

// Play a session into a <video>. Returns { pc, stop(), stats() }.
export async function play(video, { sessionId, token, base = "" }) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (e) => {
    stream.addTrack(e.track);
    video.srcObject = stream;
  });
  const url = new URL(`${base}/v1/sessions/${sessionId}/whep`, location.href).toString();
  const resource = await negotiate(pc, url, token);
  let last = null;
  return {
    pc,
    resource,
    async stop() {
      pc.close();
      // keepalive: the DELETE still goes out when the page is being closed.
      await fetch(resource, { method: "DELETE", headers: authHeaders(token), keepalive: true })
        .catch(() => {});
    },
    // Frames per second and audio flowing, from the receiver's own statistics.
    async stats() {
      const report = await pc.getStats();
      const now = { t: performance.now(), frames: 0, audioBytes: 0, audioSamples: 0 };
      let rtt = null;
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") now.frames = s.framesDecoded || 0;
        if (s.type === "inbound-rtp" && s.kind === "audio") {
          now.audioBytes = s.bytesReceived || 0;
          now.audioSamples = s.totalSamplesReceived || 0;
        }
        if (s.type === "candidate-pair" && s.state === "succeeded" && s.currentRoundTripTime)
          rtt = s.currentRoundTripTime * 1000;
      });
      const fps = last ? ((now.frames - last.frames) * 1000) / (now.t - last.t) : 0;
      last = now;
      return { fps, rtt, ...now };
    },
  };
}

// Send the microphone to a session. Returns { stop() }.
export async function sendMicrophone({ sessionId, token, base = "" }) {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of media.getAudioTracks()) pc.addTransceiver(track, { direction: "sendonly" });
  const url = new URL(`${base}/v1/sessions/${sessionId}/mic`, location.href).toString();
  let resource;
  try {
    resource = await negotiate(pc, url, token);
  } catch (err) {
    media.getTracks().forEach((t) => t.stop());
    pc.close();
    throw err;
  }
  return {
    async stop() {
      media.getTracks().forEach((t) => t.stop());
      pc.close();
      await fetch(resource, { method: "DELETE", headers: authHeaders(token) }).catch(() => {});
    },
  };
}

// The session id from /view/{id} or /obs/{id}, and ?token=.
export function pageParams() {
  const parts = location.pathname.split("/").filter(Boolean);
  const query = new URLSearchParams(location.search);
  return { sessionId: parts[parts.length - 1], token: query.get("token"), query };
}

// The picture's box takes the shape of the session's picture: an avatar's own frame need not
// be square (a photo avatar keeps its photo's framing). `packed`: colour and alpha side by side.
export function shapeFrame(video, frame, packed = false) {
  const fit = () => {
    const width = packed ? video.videoWidth / 2 : video.videoWidth;
    if (width > 0 && video.videoHeight > 0) {
      frame.style.setProperty("--aspect", String(width / video.videoHeight));
    }
  };
  video.addEventListener("loadedmetadata", fit);
  video.addEventListener("resize", fit);
}
