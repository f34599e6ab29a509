// vivavoce playground: talk to the bot over WebRTC (pipecat SmallWebRTC signalling, RTVI on the data channel).
// No build step: plain browser JavaScript (Chromium, Firefox). State for tests and tools: window.vivavoce.
"use strict";

(() => {
  const RTVI_LABEL = "rtvi-ai";
  const RTVI_VERSION = "2.2.0";
  const MAX_RECONNECTS = 3;
  const STAGES = ["vad_stop", "stt", "turn_decision", "llm_first_token", "tts_first_audio", "transport"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    talk: $("talk"), state: $("state"), error: $("error"), transcript: $("transcript"),
    latency: $("latency").tBodies[0], p50: $("latency-p50"), audio: $("bot-audio"),
    statAudio: $("stat-audio"), statRtt: $("stat-rtt"), statJitter: $("stat-jitter"), botName: $("bot-name"),
  };

  // Everything the page knows, readable from outside (tests read it through WebDriver).
  const state = (window.vivavoce = {
    bot: null, state: "idle", error: null, transcript: [], turns: [], botReady: false,
    stats: { bytesReceived: 0, packetsReceived: 0, jitterBufferMs: null, rttMs: null },
  });

  let session = null; // {pc, channel, mic, pcId, statsTimer}
  let wanted = false; // the person wants to be connected (reconnect on failure)
  let reconnects = 0;
  let botLine = null; // the <li> of the bot's current answer

  function setState(name, label) {
    state.state = name;
    ui.state.textContent = label || name;
    ui.state.dataset.state = name;
    ui.state.className = `state state-${name}`;
  }

  function showError(message) {
    state.error = message;
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }

  function addLine(role, text) {
    const li = document.createElement("li");
    li.className = role;
    li.dataset.role = role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "you" : "bot";
    const words = document.createElement("span");
    words.className = "text";
    words.textContent = text;
    li.append(who, words);
    ui.transcript.append(li);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
    const entry = { role, text };
    state.transcript.push(entry);
    li._entry = entry;
    return li;
  }

  function appendBotText(text) {
    text = (text || "").trim();
    if (!text) return;
    if (!botLine) {
      botLine = addLine("bot", text);
      return;
    }
    const span = botLine.querySelector(".text");
    span.textContent = `${span.textContent} ${text}`.trim();
    botLine._entry.text = span.textContent;
  }

  const fmt = (ms) => (ms === null || ms === undefined ? "–" : String(Math.round(ms)));

  function median(values) {
    const sorted = values.filter((v) => typeof v === "number").sort((a, b) => a - b);
    if (!sorted.length) return null;
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  function addTurn(turn) {
    state.turns.push(turn);
    const row = ui.latency.insertRow();
    for (const value of [turn.turn, fmt(turn.voice_to_voice_ms), ...STAGES.map((s) => fmt(turn.stages_ms[s]))]) {
      row.insertCell().textContent = value;
    }
    ui.p50.replaceChildren();
    const cells = ["p50", median(state.turns.map((t) => t.voice_to_voice_ms)),
      ...STAGES.map((s) => median(state.turns.map((t) => t.stages_ms[s])))];
    cells.forEach((value, i) => { ui.p50.insertCell().textContent = i ? fmt(value) : value; });
  }

  // --- RTVI messages from the bot ------------------------------------------------------------------
  function onMessage(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch (e) {
      return;
    }
    if (message.type === "signalling" && message.message && message.message.type === "peerLeft") {
      endSession("idle", "The bot ended the session (idle too long, or the server stopped): press Talk to start again.");
      return;
    }
    if (message.label !== RTVI_LABEL) return;
    const data = message.data || {};
    switch (message.type) {
      case "bot-ready":
        state.botReady = true;
        setState("connected", "connected: talk");
        break;
      case "user-input":
        if (data.final && data.input_type === "transcription" && data.text && data.text.trim()) {
          addLine("user", data.text.trim());
          botLine = null;
        }
        break;
      case "bot-output":
        // Spoken text is reported once it has been spoken (completed) or word by word (in-progress).
        if (data.will_be_spoken === false || data.spoken_status === "completed") appendBotText(data.text);
        break;
      case "bot-interrupted":
        if (botLine) botLine.classList.add("interrupted");
        break;
      case "server-message":
        if (data.type === "turn-latency") addTurn(data);
        break;
      case "error":
      case "error-response":
        console.warn("bot error", data);
        break;
      default:
        break;
    }
  }

  function sendRtvi(type, data) {
    const channel = session && session.channel;
    if (channel && channel.readyState === "open") {
      channel.send(JSON.stringify({ label: RTVI_LABEL, type, id: Math.random().toString(36).slice(2), data }));
    }
  }

  // --- Signalling ------------------------------------------------------------------------------------
  async function api(method, path, body) {
    let response;
    try {
      response = await fetch(path, {
        method, headers: body ? { "Content-Type": "application/json" } : {}, body: body && JSON.stringify(body),
      });
    } catch (e) {
      throw new Error("The server is down or unreachable.");
    }
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(payload.error || payload.detail || `The server answered ${response.status}.`);
    return payload;
  }

  async function openMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("This page needs a secure context (https or localhost) to use the microphone.");
    }
    try {
      return await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
    } catch (e) {
      if (e.name === "NotAllowedError" || e.name === "SecurityError") {
        throw new Error("Microphone permission was denied: allow the microphone for this page and try again.");
      }
      if (e.name === "NotFoundError" || e.name === "OverconstrainedError") {
        throw new Error("No microphone was found.");
      }
      throw new Error(`The microphone could not be opened (${e.name}).`);
    }
  }

  async function connect() {
    setState(reconnects ? "reconnecting" : "connecting",
      reconnects ? `reconnecting (${reconnects}/${MAX_RECONNECTS})…` : "connecting…");
    const mic = (session && session.mic) || (await openMicrophone());
    const { iceServers } = await api("GET", "/api/ice-servers");
    const pc = new RTCPeerConnection({ iceServers });
    const current = { pc, mic, pcId: null, channel: null, pending: [], statsTimer: null };
    session = current;

    // Audio first: pipecat's SmallWebRTC reads the microphone from the first transceiver.
    pc.addTransceiver(mic.getAudioTracks()[0], { direction: "sendrecv", streams: [mic] });
    current.channel = pc.createDataChannel("chat", { ordered: true });
    current.channel.onopen = () => sendRtvi("client-ready", {
      version: RTVI_VERSION, about: { library: "vivavoce-playground", platform: navigator.userAgent },
    });
    current.channel.onmessage = (event) => onMessage(event.data);

    pc.ontrack = (event) => {
      ui.audio.srcObject = event.streams[0] || new MediaStream([event.track]);
      ui.audio.play().catch(() => {});
    };
    // Trickle ICE: candidates found before the answer wait for the session's pc_id.
    pc.onicecandidate = (event) => {
      const c = event.candidate;
      if (!c) return;
      const candidate = { candidate: c.candidate, sdp_mid: c.sdpMid || "0", sdp_mline_index: c.sdpMLineIndex || 0 };
      if (current.pcId) trickle(current, [candidate]);
      else current.pending.push(candidate);
    };
    pc.onconnectionstatechange = () => onConnectionState(current);

    await pc.setLocalDescription(await pc.createOffer());
    const answer = await api("POST", "/api/offer", { sdp: pc.localDescription.sdp, type: "offer" });
    current.pcId = answer.pc_id;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    if (current.pending.length) trickle(current, current.pending.splice(0));
    current.statsTimer = setInterval(() => readStats(current), 1000);
  }

  function trickle(current, candidates) {
    api("PATCH", "/api/offer", { pc_id: current.pcId, candidates }).catch((e) => console.warn("ICE candidates", e));
  }

  function onConnectionState(current) {
    if (current !== session) return;
    const s = current.pc.connectionState;
    if (s === "connected") {
      reconnects = 0;
      showError(null);
      setState("connected", state.botReady ? "connected: talk" : "connected");
    } else if (s === "disconnected") {
      setState("reconnecting", "connection lost: reconnecting…");
    } else if (s === "failed" || s === "closed") {
      reconnect("The connection to the bot was lost.");
    }
  }

  async function reconnect(reason) {
    teardown(false);
    if (!wanted) return;
    if (reconnects >= MAX_RECONNECTS) {
      fail(`${reason} Reconnecting failed ${MAX_RECONNECTS} times: press Talk to try again.`);
      return;
    }
    reconnects += 1;
    showError(`${reason} Reconnecting…`);
    await new Promise((resolve) => setTimeout(resolve, 1000 * 2 ** (reconnects - 1)));
    if (!wanted) return;
    try {
      await connect();
    } catch (e) {
      reconnect(e.message);
    }
  }

  async function readStats(current) {
    if (current !== session) return;
    const report = await current.pc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        state.stats.bytesReceived = s.bytesReceived || 0;
        state.stats.packetsReceived = s.packetsReceived || 0;
        if (s.jitterBufferEmittedCount) {
          state.stats.jitterBufferMs = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
        }
      } else if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        state.stats.rttMs = 1000 * s.currentRoundTripTime;
      }
    });
    const st = state.stats;
    ui.statAudio.textContent = `${(st.bytesReceived / 1024).toFixed(1)} kB, ${st.packetsReceived} packets`;
    ui.statRtt.textContent = st.rttMs === null ? "–" : `${st.rttMs.toFixed(0)} ms`;
    ui.statJitter.textContent = st.jitterBufferMs === null ? "–" : `${st.jitterBufferMs.toFixed(0)} ms`;
  }

  // A reconnect keeps the microphone (no second permission prompt); hanging up releases it.
  function teardown(releaseMic) {
    const current = session;
    if (!current) return;
    if (current.pc) {
      clearInterval(current.statsTimer);
      current.pc.onconnectionstatechange = null;
      current.pc.close();
    }
    if (releaseMic && current.mic) current.mic.getTracks().forEach((t) => t.stop());
    session = releaseMic ? null : { mic: current.mic };
    state.botReady = false;
  }

  // The session is over (hung up, ended by the bot, or failed): release the microphone, say why.
  function endSession(stateName, message) {
    wanted = false;
    teardown(true);
    showError(message);
    setState(stateName, "not connected");
    ui.talk.textContent = "Talk";
    ui.talk.classList.remove("active");
  }

  const fail = (message) => endSession("failed", message);

  ui.talk.addEventListener("click", async () => {
    if (wanted) {
      sendRtvi("disconnect-bot", {});
      endSession("idle", null);
      return;
    }
    wanted = true;
    reconnects = 0;
    showError(null);
    ui.talk.disabled = true;
    try {
      await connect();
      ui.talk.textContent = "Hang up";
      ui.talk.classList.add("active");
    } catch (e) {
      fail(e.message);
    } finally {
      ui.talk.disabled = false;
    }
  });

  window.addEventListener("beforeunload", () => teardown(true));

  fetch("/health")
    .then((r) => r.json())
    .then((h) => { state.bot = h.bot; ui.botName.textContent = h.bot; })
    .catch(() => showError("The server is down or unreachable."));
})();
