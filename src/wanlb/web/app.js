/* wanlb dashboard: vanilla JS, no dependencies.
 *
 * Data: GET /api/v1/status (every 5 s and after every event: the cards and the configuration view),
 * GET /api/v1/events (at start, and after a reconnect the stream could not resume), GET /api/v1/history
 * (the daemon's last day of 10 s samples at start, then what is new every 10 s: the charts before this tab
 * opened), GET /api/v1/connections (top clients, every 5 s) and /api/v1/stream, read with fetch() and
 * parsed here (EventSource cannot send the Authorization header): `stats` once a second feeds the cards
 * and the charts' 15-minute ring buffer, `event` the timeline and the cards, `reload` the timeline.
 * A reconnect sends the last `id:` seen as Last-Event-ID, so the daemon replays what was missed (or says
 * `gap`, and the events are read again). GET /api/v1/explain answers the "Which ISP would this take?" form.
 * The token lives in sessionStorage; a read answered 401 asks for it, a drain or enable always shows it.
 */
"use strict";

(() => {
  const RING = 16 * 60; // live samples kept (one a second): the 15-minute view and a minute more
  const DAY = 86400; // seconds of the daemon's history kept here (what it keeps)
  const MIN_SPAN = 60; // seconds the time axis spans at least
  const TIME_STEPS = [15, 30, 60, 120, 180, 300, 600, 1800, 3600, 7200, 10800, 21600]; // between time-axis labels
  const GAP = 3.5; // seconds without a live sample that break a chart line (history samples: 2.5 intervals)
  const HISTORY_EVERY = 10000; // the daemon samples every 10 s
  const MAX_CONFIG_RULES = 200; // rules listed in the configuration view (the API has them all)
  const STATUS_EVERY = 5000;
  const CLIENTS_EVERY = 5000;
  const CLIENTS_LIMIT = 5000;
  const TOP_CLIENTS = 10;
  const MAX_EVENTS = 300;
  const STREAM_SILENCE = 20000; // stats come every second and keepalives every 15 s: reconnect after this
  const TOKEN_KEY = "wanlb.token";
  const PALETTE = ["#2563eb", "#9333ea", "#0891b2", "#db2777", "#4f46e5", "#0f766e", "#c026d3", "#0369a1",
    "#7c3aed", "#be185d", "#1e40af", "#155e75", "#a21caf", "#4338ca", "#0e7490", "#6d28d9"];
  const USABLE = new Set(["up", "degraded"]);

  const $ = (sel, root = document) => root.querySelector(sel);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "style") node.style.cssText = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key in node) node[key] = value;
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child != null) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // --- formatting -------------------------------------------------------------------------------

  const intFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const oneFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  function fmtCount(n) {
    return n == null ? "—" : intFmt.format(n);
  }

  function fmtRate(n) {
    return n == null ? "—" : oneFmt.format(n);
  }

  function fmtBits(bytesPerSecond) {
    if (bytesPerSecond == null) return "—";
    let v = bytesPerSecond * 8;
    const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) {
      v /= 1000;
      i++;
    }
    const digits = v >= 100 || i === 0 ? 0 : v >= 10 ? 1 : 2;
    return `${v.toFixed(digits)} ${units[i]}`;
  }

  function fmtMs(ms) {
    if (ms == null) return "—";
    return `${ms < 1 ? ms.toFixed(2) : ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  }

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 10) return `${m} min ${s % 60} s`;
    if (m < 60) return `${m} min`;
    const hours = Math.floor(m / 60);
    if (hours < 24) return `${hours} h ${m % 60} min`;
    return `${Math.floor(hours / 24)} d ${hours % 24} h`;
  }

  function fmtClock(wall, withDate) {
    const d = new Date(wall * 1000);
    const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    const today = new Date(serverNow() * 1000).toDateString() === d.toDateString();
    if (!withDate && today) return time;
    return `${d.toLocaleDateString(undefined, { day: "numeric", month: "short" })} ${time}`;
  }

  // --- state ------------------------------------------------------------------------------------

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    offset: 0, // server wall clock minus ours, seconds (from the stats messages)
    status: null, // the last /api/v1/status
    isps: [], // names, in config order
    cards: new Map(), // name -> card elements
    live: new Map(), // name -> last stats entry
    history: makeRing(RING),
    trend: [], // the daemon's samples ({t, g, isps}), oldest first, at most a day
    trendLast: 0, // the time of the newest of them (the next read asks for what came after)
    range: 15 * 60, // seconds the charts show: 15 minutes or 24 hours
    lastEventId: "", // the stream's last id: sent as Last-Event-ID on a reconnect
    configKey: "", // what the configuration view shows, to redraw it only when that changes
    events: new Map(), // key -> entry, for de-duplication
    streamEver: false,
  };

  function serverNow() {
    return Date.now() / 1000 + state.offset;
  }

  function colour(name) {
    const i = state.isps.indexOf(name);
    return i < 0 ? "#64748b" : PALETTE[i % PALETTE.length];
  }

  function makeRing(capacity) {
    const items = new Array(capacity);
    let start = 0;
    let size = 0;
    return {
      push(item) {
        items[(start + size) % capacity] = item;
        if (size < capacity) size++;
        else start = (start + 1) % capacity;
      },
      get length() {
        return size;
      },
      at(i) {
        return items[(start + i) % capacity];
      },
      last() {
        return size ? items[(start + size - 1) % capacity] : undefined;
      },
    };
  }

  // --- token and requests -----------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, detail) {
      super(`${status}${detail ? `: ${detail}` : ""}`);
      this.status = status;
      this.detail = detail;
    }
  }

  function headers(token = state.token) {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function setToken(token) {
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  async function detailOf(res) {
    try {
      const body = await res.json();
      if (typeof body.detail === "string") return body.detail;
      if (typeof body.message === "string") return body.message;
      return JSON.stringify(body.detail ?? body);
    } catch {
      return res.statusText;
    }
  }

  const waiting = []; // resolvers of reads waiting for a token

  /** A read got 401 with `used`: forget that token and wait until the user gives one the daemon accepts. */
  function tokenRefused(used) {
    if (used && used === state.token) setToken("");
    return new Promise((resolve) => {
      waiting.push(resolve);
      openAuth(used ? "The daemon refused the saved token. Enter the current one." : null);
    });
  }

  async function getJSON(path) {
    for (;;) {
      const used = state.token;
      const res = await fetch(path, { headers: headers(used), cache: "no-store" });
      if (res.status === 401) {
        await tokenRefused(used);
        continue;
      }
      if (!res.ok) throw new HttpError(res.status, await detailOf(res));
      return res.json();
    }
  }

  // --- the token dialog (reads) -----------------------------------------------------------------

  const auth = {
    dialog: $("#auth-dialog"),
    form: $("#auth-form"),
    input: $("#auth-token"),
    error: $("#auth-error"),
    text: $("#auth-text"),
    submit: $("#auth-submit"),
  };
  const AUTH_TEXT = auth.text.innerHTML;

  function openAuth(reason) {
    if (waiting.length) setConn("auth", "Token needed");
    auth.error.textContent = reason || "";
    auth.text.innerHTML = AUTH_TEXT;
    $("#auth-forget").hidden = !state.token;
    if (!auth.dialog.open) {
      auth.input.value = "";
      auth.dialog.showModal();
      auth.input.focus();
    }
  }

  auth.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = auth.input.value.trim();
    if (!token) return;
    auth.submit.disabled = true;
    auth.error.textContent = "";
    try {
      const res = await fetch("/api/v1/status", { headers: headers(token), cache: "no-store" });
      if (res.status === 401) {
        auth.error.textContent = "401 Unauthorized: the daemon refused this token.";
        auth.input.select();
        return;
      }
      if (!res.ok) {
        auth.error.textContent = `${res.status}: ${await detailOf(res)}`;
        return;
      }
      setToken(token);
      auth.dialog.close();
      applyStatus(await res.json());
      waiting.splice(0).forEach((resolve) => resolve());
    } catch (err) {
      auth.error.textContent = `Cannot reach the daemon: ${err.message}`;
    } finally {
      auth.submit.disabled = false;
    }
  });
  $("#auth-cancel").addEventListener("click", () => auth.dialog.close());
  $("#auth-forget").addEventListener("click", () => {
    setToken("");
    auth.dialog.close();
    refreshStatus();
  });
  $("#token-button").addEventListener("click", () => openAuth(null));

  // --- the action dialog (drain / enable) -------------------------------------------------------

  const act = {
    dialog: $("#action-dialog"),
    form: $("#action-form"),
    input: $("#action-token"),
    error: $("#action-error"),
    submit: $("#action-submit"),
    drainFields: $("#action-drain"),
    reason: $("#action-reason"),
    minutes: $("#action-minutes"),
    isp: null,
    verb: null,
  };

  function openAction(name, verb) {
    act.isp = name;
    act.verb = verb;
    const drain = verb === "disable";
    $("#action-title").textContent = drain ? `Drain ${name}?` : `Enable ${name}?`;
    $("#action-text").textContent = drain
      ? `${name} gets no new connections; its open connections continue. The probes keep running.`
      : `${name} goes back to its probes: up at once if they saw it healthy meanwhile.`;
    act.drainFields.hidden = !drain;
    act.reason.value = "";
    act.minutes.value = "";
    act.submit.textContent = drain ? `Drain ${name}` : `Enable ${name}`;
    act.submit.className = drain ? "btn danger" : "btn primary";
    act.error.textContent = "";
    act.input.value = state.token;
    act.dialog.showModal();
    (state.token ? act.submit : act.input).focus();
  }

  act.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = act.input.value.trim();
    const { isp, verb } = act;
    const card = state.cards.get(isp);
    act.submit.disabled = true;
    act.error.textContent = "";
    if (card) card.error.textContent = "";
    try {
      const query = new URLSearchParams();
      if (verb === "disable" && act.reason.value.trim()) query.set("reason", act.reason.value.trim());
      if (verb === "disable" && act.minutes.value) query.set("seconds", String(Number(act.minutes.value) * 60));
      const suffix = query.toString() ? `?${query}` : "";
      const res = await fetch(`/api/v1/isps/${encodeURIComponent(isp)}/${verb}${suffix}`, {
        method: "POST",
        headers: headers(token),
        cache: "no-store",
      });
      if (!res.ok) {
        const detail = await detailOf(res);
        const text = res.status === 401
          ? `401 Unauthorized: ${detail || "the token was refused"}.`
          : `${res.status}: ${detail}`;
        act.error.textContent = text;
        if (card) card.error.textContent = `${verb === "disable" ? "Drain" : "Enable"} failed — ${text}`;
        act.input.select();
        return;
      }
      setToken(token);
      act.dialog.close();
      refreshStatus();
    } catch (err) {
      act.error.textContent = `Cannot reach the daemon: ${err.message}`;
    } finally {
      act.submit.disabled = false;
    }
  });
  $("#action-cancel").addEventListener("click", () => act.dialog.close());

  // --- connection indicator and banner ----------------------------------------------------------

  function setConn(kind, text) {
    const node = $("#conn");
    node.dataset.state = kind;
    $("#conn-text").textContent = text;
  }

  function banner(text) {
    const node = $("#banner");
    node.textContent = text || "";
    node.hidden = !text;
  }

  // --- ISP cards --------------------------------------------------------------------------------

  function metric(label, field, extra) {
    const dd = h("dd", { "data-field": field }, "—");
    return [h("div", { class: extra || "" }, h("dt", { text: label }), dd), dd];
  }

  function makeCard(name) {
    const id = `isp-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    const c = { name };
    c.badge = h("span", { class: "badge", "data-field": "status" }, "…");
    c.iface = h("span", { class: "iface" });
    c.swatch = h("span", { class: "swatch", "aria-hidden": "true" });
    const [connBox, conn] = metric("Connections", "connections");
    const [newBox, perSecond] = metric("New / s", "new");
    const [rxBox, rx] = metric("In", "rx");
    const [txBox, tx] = metric("Out", "tx");
    const [latBox, latency] = metric("Latency", "latency");
    const [jitBox, jitter] = metric("Jitter", "jitter");
    const [lossBox, loss] = metric("Loss", "loss");
    const [wBox, weight] = metric("Weight", "weight");
    const share = h("strong", { "data-field": "share" }, "—");
    Object.assign(c, { conn, perSecond, share, rx, tx, latency, jitter, loss, weight });
    c.since = h("time");
    c.sinceText = h("span");
    c.bar = h("span");
    c.note = h("p", { class: "note", "data-field": "note" });
    // The data quota (isps[].quota): used of the limit this cycle, as a gauge; hidden for an ISP without one.
    c.quotaText = h("strong", { "data-field": "quota" }, "—");
    c.quotaBar = h("span");
    c.quotaGauge = h("div", { class: "quota-bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-label": `Data quota of ${name}` }, c.quotaBar);
    c.quotaCycle = h("p", { class: "quota-cycle" });
    c.quota = h("div", { class: "quota", hidden: true },
      h("div", { class: "share-row" }, h("span", {}, "Data quota"), c.quotaText), c.quotaGauge, c.quotaCycle);
    c.traffic = h("p", { class: "traffic-note", "data-field": "traffic" });
    c.error = h("p", { class: "error", role: "alert", "data-field": "error" });
    c.button = h("button", { class: "btn", type: "button", "data-action": "toggle" }, "Drain");
    c.button.addEventListener("click", () => openAction(name, c.status === "disabled" ? "enable" : "disable"));
    c.root = h(
      "article",
      { class: "card panel", id, "data-isp": name, "aria-labelledby": `${id}-name` },
      h("div", { class: "card-head" }, h("h3", { id: `${id}-name` }, c.swatch, name), c.iface, c.badge),
      h("p", { class: "since" }, c.sinceText),
      h("dl", { class: "metrics" }, connBox, newBox, rxBox, txBox, latBox, jitBox, lossBox, wBox),
      c.traffic,
      h("div", { class: "share-row" }, h("span", {}, "Share of new connections"), share),
      h("div", { class: "share", role: "presentation" }, c.bar),
      c.quota,
      c.note,
      h("div", { class: "card-foot" }, c.error, c.button),
    );
    return c;
  }

  /** The card's quota gauge: used of the limit (percent, bytes), the cycle's end, and whether it holds the ISP
   *  back (at_limit); an ISP without a quota hides it. */
  function setQuota(c, q) {
    c.quota.hidden = !q;
    if (!q) return;
    const pct = Math.max(0, Math.min(100, q.percent));
    c.quotaBar.style.width = `${pct}%`;
    c.quota.dataset.level = q.exceeded ? "over" : q.warned.length ? "warn" : "ok"; // (a warning told this cycle)
    c.quotaGauge.setAttribute("aria-valuenow", String(pct));
    c.quotaText.textContent = `${fmtIBytes(q.used_bytes)} of ${fmtIBytes(q.limit_bytes)} (${oneFmt.format(q.percent)} %)`;
    const again = `the count starts again ${fmtClock(q.cycle_end, true)} (${q.cycle})`;
    c.quotaCycle.textContent = q.exceeded ? `Limit reached: held back (${q.at_limit}) until ${again}.`
      : `At the limit: ${q.at_limit}; ${again}.`;
  }

  function fmtIBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i ? `${oneFmt.format(n)} ${units[i]}` : `${intFmt.format(n)} B`;
  }

  function setValue(dd, value, text) {
    dd.dataset.value = value == null ? "" : String(value);
    dd.textContent = text;
  }

  function setStatus(c, status, since) {
    if (since != null) c.sinceAt = since;
    if (c.status === status) return;
    c.status = status;
    c.root.dataset.status = status;
    c.badge.className = `badge s-${status}`;
    c.badge.textContent = status;
    c.button.textContent = status === "disabled" ? "Enable" : "Drain";
    c.button.setAttribute("aria-label", `${status === "disabled" ? "Enable" : "Drain"} ${c.name}`);
    c.button.className = status === "disabled" ? "btn primary" : "btn";
    tickSince(c);
    updateTraffic(c);
    updateUsable();
  }

  /** An ISP that takes no connections still shows traffic: say what it is (its probes, or what is left). */
  function updateTraffic(c) {
    const conns = Number(c.conn.dataset.value || 0);
    let kind = "";
    let text = "";
    if (c.status && !USABLE.has(c.status)) {
      if (conns > 0) {
        kind = "remaining";
        text = `${c.status === "disabled" ? "Draining" : "Out of balancing"}: In/Out is its ${fmtCount(conns)} `
          + `remaining connection${conns === 1 ? "" : "s"}${c.monitored ? " and its health probes" : ""}.`;
      } else if (c.monitored) {
        kind = "probes";
        text = "Probes only: no connection uses this ISP now; In/Out is its health probes.";
      } else {
        kind = "idle";
        text = "No connection uses this ISP now.";
      }
    }
    c.traffic.dataset.kind = kind;
    c.traffic.textContent = text;
  }

  function tickSince(c) {
    if (c.sinceAt == null) return;
    c.since.dateTime = new Date(c.sinceAt * 1000).toISOString();
    c.since.title = new Date(c.sinceAt * 1000).toString();
    c.since.textContent = fmtClock(c.sinceAt);
    c.sinceText.replaceChildren(`${c.status ? c.status[0].toUpperCase() + c.status.slice(1) : "?"} since `, c.since,
      ` · ${fmtDuration(serverNow() - c.sinceAt)} ago`);
  }

  function syncCards(names) {
    const same = names.length === state.isps.length && names.every((n, i) => n === state.isps[i]);
    if (same) return;
    state.isps = names.slice();
    const box = $("#isps");
    box.replaceChildren();
    for (const name of names) {
      const c = state.cards.get(name) || makeCard(name);
      state.cards.set(name, c);
      c.swatch.style.setProperty("--c", colour(name));
      c.bar.style.setProperty("--c", colour(name));
      box.append(c.root);
    }
    for (const name of [...state.cards.keys()]) if (!names.includes(name)) state.cards.delete(name);
    if (!names.length) box.append(h("p", { class: "empty panel" }, "The daemon has no ISPs."));
    const legend = $("#legend");
    legend.replaceChildren(
      ...names.map((n) => h("li", {}, h("span", { class: "swatch", style: `--c:${colour(n)}`, "aria-hidden": "true" }), n)),
    );
    drawCharts();
  }

  function applyStatus(s) {
    state.status = s;
    syncCards(s.isps.map((i) => i.name));
    for (const isp of s.isps) {
      const c = state.cards.get(isp.name);
      const v6 = isp.ipv6; // null when the ISP carries no IPv6
      // The uplink: interface, next hop (learned or static; what is missing while it is not whole).
      const hop = isp.uplink ? `${isp.interface} (${isp.uplink})` : `${isp.interface} → ${isp.gateway}`;
      c.iface.textContent = `${hop} · tier ${isp.tier}${v6 ? ` · IPv6 ${v6.mode} ${v6.status}` : ""}`;
      c.iface.title = isp.gateway_source || "";
      setStatus(c, isp.status, isp.since);
      const health = isp.health || {};
      c.monitored = Boolean(health.monitored);
      if (health.monitored) {
        setValue(c.latency, health.latency_ms, fmtMs(health.latency_ms));
        setValue(c.jitter, health.jitter_ms, fmtMs(health.jitter_ms));
        setValue(c.loss, health.loss_percent, health.loss_percent == null ? "—" : `${oneFmt.format(health.loss_percent)} %`);
      } else {
        for (const dd of [c.latency, c.jitter, c.loss]) setValue(dd, null, "n/a");
      }
      setValue(c.weight, isp.weight, String(isp.weight));
      setValue(c.share, isp.share_percent, `${oneFmt.format(isp.share_percent)} %`);
      c.bar.style.width = `${Math.max(0, Math.min(100, isp.share_percent))}%`;
      setQuota(c, isp.quota);
      const notes = [];
      if (isp.drain) {  // an admin drain: what the operator said, and when it ends by itself
        const why = isp.drain.reason ? `: ${isp.drain.reason}` : "";
        const until = isp.drain.until == null ? " Until enabled."
          : ` Ends at ${fmtClock(isp.drain.until)} (in ${fmtDuration(Math.max(0, isp.drain.until - serverNow()))}).`;
        notes.push(`Drained${why}.${until}`);
      }
      if (!health.monitored) notes.push("Not monitored (no health targets).");
      if (isp.link_down) notes.push("WAN link is down.");
      if (health.held_down_seconds > 0) notes.push(`Held down for ${Math.ceil(health.held_down_seconds)} s more (flap damping).`);
      if (isp.suspected) notes.push(`Suspected: ${isp.suspected}; held back until a probe round answers.`);
      if (isp.failback_seconds != null) notes.push(`Back up; takes new connections again in ${fmtDuration(isp.failback_seconds)} (failback hold-down).`);
      if (isp.decided && isp.decided !== isp.status) notes.push(`Changing to ${isp.decided}…`);
      if (v6 && v6.status !== isp.status) notes.push(`IPv6 is ${v6.status} (its own probes), IPv4 ${isp.status}.`);
      const errors = Object.entries(health.last_errors || {});
      if (errors.length && isp.status !== "up") notes.push(`Probes: ${errors.slice(0, 2).map(([t, e]) => `${t} ${e}`).join("; ")}`);
      c.note.textContent = notes.join(" ");
      if (!state.live.has(isp.name)) {
        const n = (s.conn_counts || {})[isp.name] ?? 0;
        setValue(c.conn, n, fmtCount(n));
      }
      updateTraffic(c);
    }
    renderConfig(s);
    const ct = s.conntrack || {};
    $("#sum-conntrack").replaceChildren(
      ct.entries == null ? "—" : fmtCount(ct.entries),
      ct.max ? h("small", {}, ` / ${fmtCount(ct.max)} (${oneFmt.format((100 * ct.entries) / ct.max)} %)`) : "",
    );
    $("#sum-uptime").textContent = fmtDuration(s.uptime_seconds);
    $("#daemon-info").textContent = `pid ${s.pid} · ${s.config}`;
    const last = s.last_reload;
    $("#sum-reloads").replaceChildren(fmtCount(s.reloads),
      last ? h("small", { title: `${fmtClock(last.time, true)}: ${last.message || ""}` }, ` last ${last.ok ? "ok" : "refused"}`) : "");
    const problems = [];
    if (s.last_error) problems.push(`Last error: ${s.last_error}`);
    if ((s.route_failures || []).length) problems.push(`Route failures: ${s.route_failures.join("; ")}`);
    if (s.events_lost) problems.push(`${fmtCount(s.events_lost)} conntrack events lost (counts were resynced).`);
    problems.push(...renderHa(s.ha));
    banner(problems.join(" "));
    if (!state.live.size) updateTotals();
    updateUsable();
  }

  /** An HA node: its role and its peer's in the summary; what needs a human (split brain, configs that
   *  differ, the peer or a helper gone) as banner lines, returned. */
  function renderHa(ha) {
    $("#sum-ha-box").hidden = !ha;
    if (!ha) return [];
    const peer = ha.peer || {};
    const peerText = peer.node == null ? "peer never heard"
      : `peer ${peer.node} ${peer.state === "up" ? (peer.role || "starting") : peer.state}`;
    $("#sum-ha").replaceChildren(`${ha.node} ${ha.role}`, h("small", { "data-field": "peer" }, ` · ${peerText}`));
    $("#sum-ha").dataset.role = ha.role;
    const problems = [];
    if (peer.split_brain) problems.push(`Split brain: ${ha.node} and ${peer.node} are both master (their VRRP adverts do not meet).`);
    if ((peer.config_differences || []).length) {
      problems.push(`This node's config differs from ${peer.node}'s: ${peer.config_differences.join("; ")}.`);
    }
    if (peer.state === "lost") problems.push(`HA peer ${peer.node} not heard for ${fmtDuration(peer.heard_seconds_ago || 0)}.`);
    for (const name of ["keepalived", "conntrackd"]) {
      const helper = ha[name] || {};
      if (helper.missing) problems.push(`${name} is missing: ${helper.missing}.`);
      else if (!helper.running) problems.push(`${name} is not running${helper.last_exit ? ` (${helper.last_exit})` : ""}.`);
    }
    return problems;
  }

  // --- the configuration view (read-only) -------------------------------------------------------

  function fmtSeconds(sec) {
    return sec < 1 ? `${Math.round(sec * 1000)} ms` : `${oneFmt.format(sec)} s`;
  }

  function healthRow(name, health) {
    if (!health || !health.monitored) {
      return h("tr", { "data-isp": name }, h("td", {}, name), h("td", { colSpan: 5, class: "empty" }, "Not monitored (no health targets)."));
    }
    const limits = [];
    if (health.max_loss_percent != null) limits.push(`loss ${oneFmt.format(health.max_loss_percent)} %`);
    if (health.max_latency_ms != null) limits.push(`RTT ${fmtMs(health.max_latency_ms)}`);
    return h("tr", { "data-isp": name },
      h("td", {}, name),
      h("td", { class: "wrap" }, `${health.method} → ${health.targets.join(", ")}`),
      h("td", {}, `${fmtSeconds(health.interval_seconds)} / ${fmtSeconds(health.timeout_seconds)}`),
      h("td", {}, `${health.down_after} / ${health.up_after} rounds`),
      h("td", {}, `${health.window} rounds, ${health.quorum} of ${health.targets.length} answering`),
      h("td", {}, limits.join(", ") || "—"));
  }

  /** Policies, rules and probes as the daemon runs them; redrawn only when they change (hits every time). */
  function renderConfig(s) {
    const rules = s.rules || [];
    const shown = rules.slice(0, MAX_CONFIG_RULES);
    const timing = (x) => (x && x.monitored ? [x.method, x.targets, x.interval_seconds, x.timeout_seconds, x.down_after,
      x.up_after, x.window, x.quorum, x.max_loss_percent, x.max_latency_ms] : null);
    const key = JSON.stringify([s.policies, shown.map((r) => [r.name, r.match, r.target]), rules.length,
      s.isps.map((i) => [i.name, timing(i.health), i.ipv6 && i.ipv6.own_health ? timing(i.ipv6.health) : null])]);
    if (key !== state.configKey) {
      state.configKey = key;
      $("#config-policies tbody").replaceChildren(...(s.policies || []).map((p) => {
        const algorithm = [p.algorithm, p.hash_fields && p.hash_fields.length ? `over ${p.hash_fields.join(", ")}` : null,
          p.sticky ? "sticky" : null].filter(Boolean).join(" · ");
        const active = Object.entries(p.active || {}).map(([isp, w]) => `${isp} ${w}`).join(", ");
        return h("tr", { "data-policy": p.name },
          h("td", {}, p.name),
          h("td", {}, algorithm),
          h("td", { class: "wrap" }, (p.members || []).map((m) => `${m.isp} (${m.tier}, ${m.weight})`).join(", ")),
          h("td", { class: "wrap" }, active || "none"),
          h("td", {}, p.on_unavailable));
      }));
      $("#config-rules tbody").replaceChildren(...shown.map((r, i) => h("tr", { "data-rule": r.name },
        h("td", { class: "rank" }, String(i + 1)),
        h("td", {}, r.name),
        h("td", { class: "wrap" }, r.match),
        h("td", {}, r.target),
        h("td", { class: "num", "data-field": "hits" }, "—"))));
      if (!rules.length) {
        $("#config-rules tbody").append(h("tr", {}, h("td", { colSpan: 5, class: "empty" },
          "No rules: every NEW connection goes to the default policy.")));
      }
      $("#config-rules-note").textContent = rules.length > shown.length
        ? `The first ${shown.length} of ${fmtCount(rules.length)} rules, in match order (all: GET /api/v1/status).`
        : "Rules, in match order: the first that matches a NEW connection decides.";
      $("#config-health tbody").replaceChildren(...s.isps.flatMap((i) => [healthRow(i.name, i.health),
        i.ipv6 && i.ipv6.own_health ? healthRow(`${i.name} (IPv6)`, i.ipv6.health) : null].filter(Boolean)));
    }
    const cells = document.querySelectorAll("#config-rules [data-field=hits]");
    shown.forEach((r, i) => cells[i] && setValue(cells[i], r.hits, fmtCount(r.hits)));
  }

  function updateUsable() {
    const all = [...state.cards.values()];
    const usable = all.filter((c) => USABLE.has(c.status)).length;
    const node = $("#sum-usable");
    node.dataset.value = String(usable);
    node.replaceChildren(`${usable}`, h("small", {}, ` of ${all.length}`));
  }

  function updateTotals() {
    let conns = 0;
    let perSecond = null;
    let rx = null;
    let tx = null;
    const add = (a, b) => (b == null ? a : (a || 0) + b);
    if (state.live.size) {
      for (const v of state.live.values()) {
        conns += v.connections || 0;
        perSecond = add(perSecond, v.new_per_second);
        rx = add(rx, v.rx_bytes_per_second);
        tx = add(tx, v.tx_bytes_per_second);
      }
    } else if (state.status) {
      conns = Object.values(state.status.conn_counts || {}).reduce((a, b) => a + b, 0);
    }
    setValue($("#sum-connections"), conns, fmtCount(conns));
    setValue($("#sum-new"), perSecond, fmtRate(perSecond));
    setValue($("#sum-rx"), rx, fmtBits(rx));
    setValue($("#sum-tx"), tx, fmtBits(tx));
  }

  let statusBusy = false;
  let statusAgain = false;

  async function refreshStatus() {
    if (statusBusy) {
      statusAgain = true;
      return;
    }
    statusBusy = true;
    try {
      do {
        statusAgain = false;
        applyStatus(await getJSON("/api/v1/status"));
      } while (statusAgain);
    } catch (err) {
      if (!state.streamEver) setConn("reconnecting", `Daemon unreachable (${err.message})`);
    } finally {
      statusBusy = false;
    }
  }

  // --- which ISP would this take (GET /api/v1/explain) ------------------------------------------

  const VERDICTS = {
    bypass: "Not balanced (bypass)",
    local: "Not balanced (to the gateway, broadcast or multicast)",
    drop: "Dropped",
    reject: "Rejected (ICMP host-unreachable)",
    not_lan: "Untouched (not a LAN interface)",
    last_resort: "No usable ISP (last resort)",
    undetermined: "Undetermined",
  };

  const explain = {
    form: $("#explain-form"),
    submit: $("#explain-submit"),
    error: $("#explain-error"),
    answer: $("#explain-answer"),
  };

  function fmtEndpoint(address, port) {
    if (port == null) return address;
    return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
  }

  /** The ISP when it is determined, else the ISPs the pick is among, or what happens instead. */
  function headlineOf(d) {
    if (d.verdict === "isp") return d.isp || `One of ${d.candidates.map((c) => c.isp).join(", ")}`;
    if (d.verdict === "inbound") return `Inbound on ${d.isp} (arrives on its WAN)`;
    return VERDICTS[d.verdict] || d.verdict;
  }

  /** One decision: the headline, the API's one line, then the rule, policy, candidates and route, and the walk
   *  chain by chain. */
  function decisionItem(d) {
    const f = d.flow;
    const swatch = (isp) => h("span", { class: "swatch", style: `--c:${colour(isp)}`, "aria-hidden": "true" });
    const policy = d.policy && [d.policy.startsWith("via_") ? `via ${d.policy.slice(4)}` : d.policy, d.algorithm,
      d.tier == null ? null : `tier ${d.tier}`].filter(Boolean).join(" · ");
    // No rule row when none matched and no policy picked: the summary says why (a bypass, a WAN, a rule that
    // reads a port the flow does not give).
    const rule = d.rule ? `${d.rule.index}. ${d.rule.name} → ${d.rule.target}` : d.policy ? "none matched" : null;
    const row = (label, field, ...value) => h("div", {}, h("dt", {}, label), h("dd", { "data-field": field }, ...value));
    return h("article", { class: "decision", "data-verdict": d.verdict, "data-isp": d.isp },
      h("p", { class: "note", "data-field": "flow" },
        `${f.proto} ${fmtEndpoint(f.src, f.sport)} → ${fmtEndpoint(f.dst, f.dport)} arriving on ${f.iif}`),
      h("h3", { "data-field": "headline" }, d.isp ? swatch(d.isp) : null, headlineOf(d)),
      h("p", { class: "why", "data-field": "summary" }, d.summary),
      h("dl", {},
        rule ? row("Rule", "rule", rule) : null,
        policy ? row("Policy", "policy", policy) : null,
        d.candidates.length ? row("Candidates", "candidates", h("ul", { class: "candidates" },
          d.candidates.map((c) => h("li", { "data-isp": c.isp }, swatch(c.isp),
            `${c.isp} ×${c.weight}`, h("small", {}, ` (${oneFmt.format(c.share_percent)} %)`))))) : null,
        row("Route", "route", d.route)),
      d.steps.length ? h("details", {},
        h("summary", {}, `The walk, step by step (${d.steps.length})`),
        h("ol", { class: "steps" }, d.steps.map((s) => h("li", {}, s)))) : null);
  }

  explain.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const query = new URLSearchParams({
      from: $("#explain-from").value.trim(),
      to: $("#explain-to").value.trim(),
      proto: $("#explain-proto").value,
    });
    const iif = $("#explain-iif").value.trim();
    if (iif) query.set("iif", iif); // else the daemon takes the first LAN interface
    explain.submit.disabled = true;
    explain.answer.setAttribute("aria-busy", "true");
    explain.error.textContent = "";
    try {
      const reply = await getJSON(`/api/v1/explain?${query}`);
      const n = reply.decisions.length;
      const named = reply.name ? `${reply.name}: ${n} address${n === 1 ? "" : "es"} the daemon resolved · ` : "";
      explain.answer.replaceChildren(h("p", { class: "note" }, `${named}answered at ${fmtClock(serverNow())}`),
        ...reply.decisions.map(decisionItem));
    } catch (err) {
      explain.answer.replaceChildren();
      explain.error.textContent = err instanceof HttpError ? err.message : `Cannot reach the daemon: ${err.message}`;
    } finally {
      explain.submit.disabled = false;
      explain.answer.removeAttribute("aria-busy");
    }
  });

  // --- the stream -------------------------------------------------------------------------------

  function onStats(msg) {
    if (typeof msg.time === "number") state.offset = msg.time - Date.now() / 1000;
    const sample = { t: msg.time, g: GAP, d: 1, isps: {} };
    let unknown = false;
    for (const [name, v] of Object.entries(msg.isps || {})) {
      sample.isps[name] = v;
      state.live.set(name, v);
      const c = state.cards.get(name);
      if (!c) {
        unknown = true;
        continue;
      }
      if (v.status && v.status !== c.status) {
        setStatus(c, v.status, null);
        refreshStatus();
      }
      setValue(c.conn, v.connections, fmtCount(v.connections));
      setValue(c.perSecond, v.new_per_second, fmtRate(v.new_per_second));
      setValue(c.rx, v.rx_bytes_per_second, fmtBits(v.rx_bytes_per_second));
      setValue(c.tx, v.tx_bytes_per_second, fmtBits(v.tx_bytes_per_second));
      updateTraffic(c);
    }
    for (const name of [...state.live.keys()]) if (!(name in (msg.isps || {}))) state.live.delete(name);
    if (unknown) refreshStatus();
    state.history.push(sample);
    updateTotals();
    drawCharts();
  }

  function eventKey(e) {
    return `${e.time}|${e.isp}|${e.event}|${e.status}|${e.family || ""}`;
  }

  function onEvent(e, fresh) {
    addTimeline(e, fresh, "isp");
    const c = state.cards.get(e.isp);
    // The card shows the ISP's (IPv4) state: an event of its IPv6 alone changes only the IPv6 line.
    if (c && e.status !== "removed" && e.family !== "6") setStatus(c, e.status, e.time);
    refreshStatus();
  }

  function onReload(r) {
    addTimeline(r, true, "reload");
    refreshStatus();
    if (r.ok) loadHistory(true); // ISPs a reload removed are gone from the daemon's history too
  }

  /** The stream could not give what was missed (older than its buffer, or the daemon restarted). */
  function onGap() {
    loadEvents();
    loadHistory(true);
  }

  function dispatch(type, data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (type === "stats") onStats(msg);
    else if (type === "event") onEvent(msg, true);
    else if (type === "reload") onReload(msg);
    else if (type === "gap") onGap();
  }

  async function streamForever() {
    let backoff = 1000;
    for (;;) {
      const abort = new AbortController();
      let timer = 0;
      const kick = () => {
        clearTimeout(timer);
        timer = setTimeout(() => abort.abort(), STREAM_SILENCE);
      };
      let why = "";
      try {
        kick();
        const used = state.token;
        const resume = state.lastEventId ? { "Last-Event-ID": state.lastEventId } : {};
        const res = await fetch("/api/v1/stream", { headers: { ...headers(used), ...resume }, cache: "no-store",
          signal: abort.signal });
        if (res.status === 401) {
          clearTimeout(timer);
          await tokenRefused(used);
          continue;
        }
        if (res.status === 400 && state.lastEventId) { // an id the daemon cannot read: start afresh
          state.lastEventId = "";
          throw new Error(await detailOf(res));
        }
        if (!res.ok || !res.body) throw new Error(res.status === 503 ? "too many stream clients" : `HTTP ${res.status}`);
        setConn("live", "Live");
        if (state.streamEver) {
          if (!state.lastEventId) loadEvents(); // else the daemon replays what was missed, or says "gap"
          refreshStatus();
        }
        state.streamEver = true;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let type = "";
        let data = [];
        let id = null;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          kick();
          buffer += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buffer.indexOf("\n")) >= 0) {
            let line = buffer.slice(0, nl);
            buffer = buffer.slice(nl + 1);
            if (line.endsWith("\r")) line = line.slice(0, -1);
            if (line === "") {
              if (id !== null) state.lastEventId = id;
              if (data.length) {
                dispatch(type || "message", data.join("\n"));
                backoff = 1000;
              }
              type = "";
              data = [];
              id = null;
            } else if (!line.startsWith(":")) {
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              let value = colon < 0 ? "" : line.slice(colon + 1);
              if (value.startsWith(" ")) value = value.slice(1);
              if (field === "event") type = value;
              else if (field === "data") data.push(value);
              else if (field === "id") id = value;
            }
          }
        }
        why = "stream ended";
      } catch (err) {
        why = abort.signal.aborted ? "stream went silent" : err.message;
      }
      clearTimeout(timer);
      const wait = Math.round(backoff * (0.8 + Math.random() * 0.4));
      setConn("reconnecting", `Reconnecting in ${Math.ceil(wait / 1000)} s (${why})`);
      await sleep(wait);
      backoff = Math.min(backoff * 2, 30000);
    }
  }

  // --- timeline ---------------------------------------------------------------------------------

  function addTimeline(e, fresh, kind) {
    const key = kind === "reload" ? `reload|${e.time}` : eventKey(e);
    if (state.events.has(key)) return;
    const li = kind === "reload" ? reloadItem(e) : eventItem(e);
    li.dataset.time = String(e.time);
    state.events.set(key, li);
    if (fresh) li.classList.add("fresh");
    const list = $("#timeline");
    let before = null; // newest first: insert before the first item older than this one
    for (const item of list.children) {
      if (Number(item.dataset.time) <= e.time) {
        before = item;
        break;
      }
    }
    list.insertBefore(li, before);
    while (list.children.length > MAX_EVENTS) {
      const last = list.lastElementChild;
      for (const [k, v] of state.events) if (v === last) state.events.delete(k);
      last.remove();
    }
    $("#timeline-empty").hidden = list.children.length > 0;
  }

  function badge(status) {
    return h("span", { class: `badge small s-${status}` }, status);
  }

  function eventItem(e) {
    const failover = USABLE.has(e.from) && e.status === "down";
    const drained = USABLE.has(e.from) && e.status === "disabled";
    const recovered = e.from && !USABLE.has(e.from) && USABLE.has(e.status);
    const head = h(
      "p",
      { class: "ev-head" },
      e.isp ? h("span", { class: "swatch", style: `--c:${colour(e.isp)}`, "aria-hidden": "true" }) : null,
      e.isp || "HA pair", // an HA node's own events (role, peer, split brain, config) are no ISP's
      e.from && e.from !== e.status ? [badge(e.from), h("span", { class: "arrow", "aria-label": "to" }, "→")] : null,
      badge(e.status),
      e.event !== e.status ? h("span", { class: "ev-kind" }, `(${e.event})`) : null,
      e.family ? h("span", { class: "tag family" }, `IPv${e.family}`) : null, // an ISP with health per family
      failover ? h("span", { class: "tag failover" }, "failover") : null,
      drained ? h("span", { class: "tag drained" }, "drained") : null,
      recovered ? h("span", { class: "tag recovered" }, "recovered") : null,
    );
    const meta = [];
    if (e.loss_percent != null) meta.push(`loss ${oneFmt.format(e.loss_percent)} %`);
    if (e.latency_ms != null) meta.push(`latency ${fmtMs(e.latency_ms)}`);
    if (e.flushed != null) meta.push(`${fmtCount(e.flushed)} connection${e.flushed === 1 ? "" : "s"} flushed`);
    if (e.applied_ms != null) meta.push(`applied in ${fmtMs(e.applied_ms)}`);
    if (e.error) meta.push(`error: ${e.error}`);
    return h(
      "li",
      { class: `ev ev-${e.status}`, "data-isp": e.isp, "data-status": e.status, "data-event": e.event,
        "data-family": e.family || "" },
      h("time", { dateTime: new Date(e.time * 1000).toISOString(), title: new Date(e.time * 1000).toString() }, fmtClock(e.time)),
      h("div", {}, head, e.reason ? h("p", { class: "ev-reason" }, e.reason) : null,
        meta.length ? h("p", { class: "ev-meta" }, meta.join(" · ")) : null),
    );
  }

  function reloadItem(r) {
    return h(
      "li",
      { class: "ev ev-reload", "data-event": "reload" },
      h("time", { dateTime: new Date(r.time * 1000).toISOString() }, fmtClock(r.time)),
      h("div", {},
        h("p", { class: "ev-head" }, "Config reload", h("span", { class: "tag reload" }, r.result || (r.ok ? "ok" : "refused"))),
        r.message ? h("p", { class: "ev-reason" }, r.message.split("\n")[0]) : null),
    );
  }

  async function loadEvents() {
    try {
      const events = await getJSON("/api/v1/events?limit=200");
      for (const e of events) addTimeline(e, false, "isp");
    } catch (err) {
      /* the next reconnect or status poll tries again */
    }
  }

  // --- the daemon's history ---------------------------------------------------------------------

  let historyBusy = false;
  let historyAgain = null; // asked again while a read was under way: null, or whether afresh

  /** What the daemon sampled since the newest sample here (all of its day at first, or with `fresh`). */
  async function loadHistory(fresh) {
    if (historyBusy) {
      historyAgain = historyAgain || Boolean(fresh);
      return;
    }
    historyBusy = true;
    try {
      const reply = await getJSON(`/api/v1/history?since=${fresh ? 0 : state.trendLast}`);
      if (fresh) {
        state.trend = [];
        state.trendLast = 0;
      }
      const g = (reply.interval_seconds || 10) * 2.5;
      const columns = Object.entries(reply.isps || {});
      reply.times.forEach((t, i) => {
        const sample = { t, g, d: reply.interval_seconds || 10, isps: {} };
        for (const [name, col] of columns) {
          if (col.status[i] == null) continue; // the ISP did not exist yet
          sample.isps[name] = {
            status: col.status[i], connections: col.connections[i], rtt_ms: col.rtt_ms[i],
            loss_percent: col.loss_percent[i], rx_bytes_per_second: col.rx_bytes_per_second[i],
            tx_bytes_per_second: col.tx_bytes_per_second[i],
          };
        }
        state.trend.push(sample);
      });
      if (reply.times.length) state.trendLast = reply.times[reply.times.length - 1];
      let old = 0;
      while (old < state.trend.length && state.trend[old].t <= state.trendLast - DAY) old++;
      if (old) state.trend.splice(0, old);
      drawCharts();
    } catch (err) {
      /* the next round tries again */
    } finally {
      historyBusy = false;
    }
    if (historyAgain !== null) {
      const again = historyAgain;
      historyAgain = null;
      loadHistory(again);
    }
  }

  // --- top clients ------------------------------------------------------------------------------

  async function refreshClients() {
    if (document.hidden && $("#clients tbody").children.length) return; // a background tab: no dumps
    let reply;
    try {
      reply = await getJSON(`/api/v1/connections?limit=${CLIENTS_LIMIT}`);
    } catch (err) {
      $("#clients-note").textContent = `Could not read the connections: ${err.message}`;
      return;
    }
    // The gateway's own connections (from its WAN, LAN or loopback addresses) are not LAN clients'.
    const lan = new Map();
    const own = new Map();
    for (const conn of reply.connections) {
      const src = conn.orig && conn.orig.src;
      if (!src) continue;
      const by = conn.from_gateway ? own : lan;
      let row = by.get(src);
      if (!row) by.set(src, (row = { src, n: 0, isps: {} }));
      row.n++;
      const isp = conn.isp || "";
      row.isps[isp] = (row.isps[isp] || 0) + 1;
    }
    const top = (by) => [...by.values()].sort((a, b) => b.n - a.n || a.src.localeCompare(b.src)).slice(0, TOP_CLIENTS);
    const mixOf = (row) => {
      const parts = Object.entries(row.isps).sort((a, b) => b[1] - a[1]);
      const mix = h("div", { class: "mix", role: "presentation" },
        parts.map(([isp, n]) => h("span", {
          style: `--c:${isp ? colour(isp) : "#94a3b8"};width:${(100 * n) / row.n}%`,
          title: `${isp || "no ISP (to or from the gateway itself)"}: ${n}`,
        })));
      const text = parts.map(([isp, n]) => `${isp || "no ISP"} ${fmtCount(n)}`).join(" · ");
      return [mix, h("div", { class: "mix-text" }, text)];
    };
    const rows = top(lan);
    const body = $("#clients tbody");
    body.replaceChildren(
      ...rows.map((row, i) => h("tr", { "data-client": row.src, "data-count": String(row.n) },
        h("td", { class: "rank" }, String(i + 1)),
        h("td", { class: "addr" }, row.src),
        h("td", { class: "num" }, fmtCount(row.n)),
        h("td", { class: "by-isp" }, mixOf(row)))),
    );
    if (!rows.length) body.append(h("tr", {}, h("td", { colSpan: 4, class: "empty" }, "No connections from LAN hosts.")));
    const mine = top(own);
    const gwBody = $("#gateway-clients tbody");
    gwBody.replaceChildren(
      ...mine.map((row) => h("tr", { "data-gateway-address": row.src, "data-count": String(row.n) },
        h("td", { class: "addr" }, row.src),
        h("td", { class: "num" }, fmtCount(row.n)),
        h("td", { class: "by-isp" }, mixOf(row)))),
    );
    if (!mine.length) gwBody.append(h("tr", {}, h("td", { colSpan: 3, class: "empty" }, "None of its own.")));
    const when = fmtClock(serverNow());
    $("#clients-note").textContent = reply.truncated
      ? `From the first ${fmtCount(reply.count)} conntrack entries (more exist) · ${when}`
      : `From all ${fmtCount(reply.count)} conntrack entries · ${when}`;
  }

  // --- charts -----------------------------------------------------------------------------------

  function niceStep(max, ticks) {
    const raw = max / ticks;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  }

  function compactBits(bytes) {
    const [number, unit] = fmtBits(bytes).split(" ");
    return `${Number(number)}${unit.replace("bit/s", "")}`;
  }

  function fmtAgo(ago) {
    if (ago % 3600 === 0) return `−${ago / 3600} h`;
    return ago % 60 ? `−${ago} s` : `−${ago / 60} min`;
  }

  function rangeText() {
    return state.range >= DAY ? "last 24 hours" : "last 15 minutes";
  }

  /** The samples the charts show: the daemon's older than the page's first live one, then the live ones. */
  function visible() {
    const live = state.history;
    const firstLive = live.length ? live.at(0).t : Infinity;
    const lastTrend = state.trend.length ? state.trend[state.trend.length - 1].t : null;
    const now = live.length ? live.last().t : lastTrend ?? serverNow();
    const t0 = now - state.range;
    const out = [];
    for (const s of state.trend) if (s.t >= t0 && s.t < firstLive) out.push(s);
    for (let i = 0; i < live.length; i++) if (live.at(i).t >= t0) out.push(live.at(i));
    return { now, samples: out };
  }

  /** Whether the line from sample `a` to the next one `b` is drawn (or breaks: no samples in between). */
  function joined(a, b) {
    return b.t - a.t <= Math.max(a.g || GAP, b.g || GAP);
  }

  function axis(ctx, x, span, now, left, topPad, plotH, height, grid, muted) {
    ctx.textBaseline = "alphabetic";
    const tickEvery = TIME_STEPS.find((st) => span / st <= 4) || 21600;
    for (let ago = 0; ago <= span + 0.5; ago += tickEvery) {
      const xx = Math.round(x(now - ago)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(xx, topPad);
      ctx.lineTo(xx, topPad + plotH);
      ctx.stroke();
      ctx.fillStyle = muted;
      ctx.textAlign = ago === 0 ? "right" : xx - left < 30 ? "left" : "center";
      ctx.fillText(ago === 0 ? "now" : fmtAgo(ago), xx, height - 5);
    }
  }

  function prepare(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return null;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const css = getComputedStyle(document.documentElement);
    ctx.font = `11px ${css.fontFamily}`;
    return { ctx, width, height, css };
  }

  class Chart {
    constructor(figure, options) {
      this.figure = figure;
      this.canvas = $("canvas", figure);
      this.nowLabel = $(".now", figure);
      this.value = options.value;
      this.tick = options.tick;
      this.format = options.format;
      this.floor = options.floor;
      this.worst = Boolean(options.worst); // the "now" label: the worst ISP's value (RTT, loss), not the total
      this.hover = null;
      new ResizeObserver(() => this.draw()).observe(this.canvas);
      this.canvas.addEventListener("pointermove", (e) => {
        const r = this.canvas.getBoundingClientRect();
        this.hover = e.clientX - r.left;
        this.draw();
      });
      this.canvas.addEventListener("pointerleave", () => {
        this.hover = null;
        this.draw();
      });
    }

    draw(view = visible()) {
      const canvas = this.canvas;
      const got = prepare(canvas);
      if (!got) return;
      const { ctx, width, height, css } = got;
      const muted = css.getPropertyValue("--muted").trim();
      const grid = css.getPropertyValue("--grid").trim();
      const text = css.getPropertyValue("--text").trim();
      const surface = css.getPropertyValue("--surface").trim();

      const { now, samples: data } = view;
      const last = data.length ? data[data.length - 1] : undefined;
      // Until the range is filled the time axis spans what there is (at least a minute).
      const span = data.length ? Math.min(state.range, Math.max(MIN_SPAN, now - data[0].t)) : MIN_SPAN;
      const t0 = now - span;
      let max = 0;
      for (const s of data) {
        for (const name of state.isps) {
          const v = s.isps[name] ? this.value(s.isps[name]) : null;
          if (v != null && v > max) max = v;
        }
      }
      max = Math.max(max, this.floor);
      const step = niceStep(max, 4);
      const top = Math.ceil(max / step) * step;
      let labelWidth = 0;
      const ticks = [];
      for (let i = 0; i * step <= top + step / 2; i++) ticks.push(i * step);
      for (const v of ticks) labelWidth = Math.max(labelWidth, ctx.measureText(this.tick(v)).width);
      const left = Math.ceil(labelWidth) + 10;
      const right = 6;
      const topPad = 8;
      const bottom = 20;
      const plotW = width - left - right;
      const plotH = height - topPad - bottom;
      const x = (t) => left + ((t - t0) / span) * plotW;
      const y = (v) => topPad + plotH - (v / top) * plotH;

      ctx.lineWidth = 1;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (const v of ticks) {
        const yy = Math.round(y(v)) + 0.5;
        ctx.strokeStyle = grid;
        ctx.beginPath();
        ctx.moveTo(left, yy);
        ctx.lineTo(width - right, yy);
        ctx.stroke();
        ctx.fillStyle = muted;
        ctx.fillText(this.tick(v), left - 6, yy);
      }
      axis(ctx, x, span, now, left, topPad, plotH, height, grid, muted);

      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      for (const name of state.isps) {
        ctx.strokeStyle = colour(name);
        ctx.beginPath();
        let prev = null;
        for (const s of data) {
          const v = s.isps[name] ? this.value(s.isps[name]) : null;
          if (v == null) {
            prev = null;
            continue;
          }
          if (prev == null || !joined(prev, s)) ctx.moveTo(x(s.t), y(v));
          else ctx.lineTo(x(s.t), y(v));
          prev = s;
        }
        ctx.stroke();
      }

      const values = last ? state.isps.map((n) => [n, last.isps[n] ? this.value(last.isps[n]) : null]) : [];
      const known = values.map(([, v]) => v).filter((v) => v != null);
      this.nowLabel.textContent = !last ? "" : this.worst
        ? `now: worst ${known.length ? this.format(Math.max(...known)) : "—"}`
        : `now: ${this.format(known.reduce((a, v) => a + v, 0))} total`;
      this.figure.dataset.samples = String(data.length);
      this.figure.dataset.oldest = data.length ? String(data[0].t) : "";
      canvas.setAttribute("aria-label", `${$("figcaption span", this.figure).textContent} per ISP, ${rangeText()}. Now: ${
        values.map(([n, v]) => `${n} ${this.format(v)}`).join(", ") || "no data yet"}`);

      if (this.hover != null && data.length && this.hover >= left) {
        const t = t0 + ((this.hover - left) / plotW) * span;
        let best = null;
        for (const s of data) {
          if (!best || Math.abs(s.t - t) < Math.abs(best.t - t)) best = s;
        }
        if (best && Math.abs(best.t - t) <= Math.max(GAP, best.g || GAP)) {
          const xx = Math.round(x(best.t)) + 0.5;
          ctx.strokeStyle = muted;
          ctx.lineWidth = 1;
          ctx.beginPath();
          ctx.moveTo(xx, topPad);
          ctx.lineTo(xx, topPad + plotH);
          ctx.stroke();
          const lines = [fmtClock(best.t, state.range >= DAY), ...state.isps.map((n) => [n, best.isps[n] ? this.value(best.isps[n]) : null])];
          ctx.font = `12px ${css.fontFamily}`;
          const w = Math.max(...lines.map((l) => ctx.measureText(typeof l === "string" ? l : `${l[0]}  ${this.format(l[1])}`).width + (typeof l === "string" ? 0 : 14))) + 16;
          const boxH = lines.length * 17 + 8;
          const bx = xx + 10 + w > width ? xx - 10 - w : xx + 10;
          ctx.fillStyle = surface;
          ctx.strokeStyle = grid;
          ctx.globalAlpha = 0.95;
          ctx.fillRect(bx, topPad, w, boxH);
          ctx.globalAlpha = 1;
          ctx.strokeRect(bx + 0.5, topPad + 0.5, w, boxH);
          ctx.textAlign = "left";
          lines.forEach((l, i) => {
            const ly = topPad + 18 + i * 17;
            if (typeof l === "string") {
              ctx.fillStyle = muted;
              ctx.fillText(l, bx + 8, ly);
            } else {
              ctx.fillStyle = colour(l[0]);
              ctx.fillRect(bx + 8, ly - 9, 9, 9);
              ctx.fillStyle = text;
              ctx.fillText(`${l[0]}  ${this.format(l[1])}`, bx + 22, ly);
            }
          });
        }
      }
    }
  }

  const STATE_COLOURS = ["up", "degraded", "down", "disabled"];

  /** One row per ISP, coloured by its state over time: when it was down, drained or degraded, and how long. */
  class StateChart {
    constructor(figure) {
      this.figure = figure;
      this.canvas = $("canvas", figure);
      this.nowLabel = $(".now", figure);
      new ResizeObserver(() => this.draw()).observe(this.canvas);
    }

    draw(view = visible()) {
      const got = prepare(this.canvas);
      if (!got) return;
      const { ctx, width, height, css } = got;
      const muted = css.getPropertyValue("--muted").trim();
      const grid = css.getPropertyValue("--grid").trim();
      const colours = Object.fromEntries(STATE_COLOURS.map((st) => [st, css.getPropertyValue(`--${st}`).trim()]));
      const { now, samples: data } = view;
      const span = data.length ? Math.min(state.range, Math.max(MIN_SPAN, now - data[0].t)) : MIN_SPAN;
      const t0 = now - span;
      let labelWidth = 0;
      for (const name of state.isps) labelWidth = Math.max(labelWidth, ctx.measureText(name).width);
      const left = Math.ceil(labelWidth) + 10;
      const topPad = 8;
      const plotW = width - left - 6;
      const plotH = height - topPad - 20;
      const rowH = plotH / Math.max(1, state.isps.length);
      const x = (t) => left + ((t - t0) / span) * plotW;
      const spent = {}; // ISP -> state -> seconds in view
      state.isps.forEach((name, row) => {
        const top = topPad + row * rowH + 2;
        const bar = Math.max(2, rowH - 4);
        ctx.fillStyle = muted;
        ctx.textAlign = "right";
        ctx.textBaseline = "middle";
        ctx.fillText(name, left - 6, top + bar / 2);
        ctx.fillStyle = grid;
        ctx.fillRect(left, top, plotW, bar);
        const mine = (spent[name] = {});
        data.forEach((s, i) => {
          const v = s.isps[name];
          if (!v || !v.status) return;
          const next = data[i + 1];
          const end = next && joined(s, next) ? next.t : Math.min(now, s.t + s.d);
          mine[v.status] = (mine[v.status] || 0) + Math.max(0, end - s.t);
          ctx.fillStyle = colours[v.status] || muted;
          ctx.fillRect(x(s.t), top, Math.max(1, x(end) - x(s.t)), bar);
        });
      });
      ctx.lineWidth = 1;
      axis(ctx, x, span, now, left, topPad, plotH, height, grid, muted);
      const away = (name) => Object.entries(spent[name] || {}).filter(([st]) => st !== "up")
        .map(([st, sec]) => `${name} ${st} ${fmtDuration(sec)}`);
      const summary = state.isps.flatMap(away);
      this.nowLabel.textContent = data.length ? summary.join(", ") || "all up" : "";
      this.figure.dataset.samples = String(data.length);
      this.figure.dataset.states = JSON.stringify(Object.fromEntries(
        Object.entries(spent).map(([name, m]) => [name, Object.keys(m).sort()])));
      this.canvas.setAttribute("aria-label", `Each ISP's state, ${rangeText()}: ${
        data.length ? summary.join(", ") || "every ISP up throughout" : "no data yet"}`);
    }
  }

  let charts = [];
  let drawQueued = false;

  function drawCharts() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      const view = visible();
      for (const chart of charts) chart.draw(view);
    });
  }

  charts = [
    new Chart($("#chart-connections"), {
      value: (v) => v.connections,
      tick: (v) => (v >= 10000 ? `${oneFmt.format(v / 1000)}k` : fmtCount(v)),
      format: fmtCount,
      floor: 5,
    }),
    new Chart($("#chart-rx"), { value: (v) => v.rx_bytes_per_second, tick: compactBits, format: fmtBits, floor: 125 }),
    new Chart($("#chart-tx"), { value: (v) => v.tx_bytes_per_second, tick: compactBits, format: fmtBits, floor: 125 }),
    new Chart($("#chart-rtt"), { value: (v) => v.rtt_ms, tick: (v) => oneFmt.format(v), format: fmtMs, floor: 5, worst: true }),
    new Chart($("#chart-loss"), {
      value: (v) => v.loss_percent,
      tick: (v) => oneFmt.format(v),
      format: (v) => (v == null ? "—" : `${oneFmt.format(v)} %`),
      floor: 5,
      worst: true,
    }),
    new StateChart($("#chart-states")),
  ];
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      state.range = Number(button.dataset.range);
      for (const b of document.querySelectorAll("[data-range]")) b.setAttribute("aria-pressed", String(b === button));
      $("#charts-range-title").textContent = state.range >= DAY ? "Last 24 hours" : "Last 15 minutes";
      drawCharts();
    });
  }
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener?.("change", drawCharts);

  // --- start ------------------------------------------------------------------------------------

  function every(ms, fn) {
    const loop = async () => {
      await fn();
      setTimeout(loop, ms);
    };
    setTimeout(loop, ms);
  }

  async function start() {
    await refreshStatus();
    loadEvents();
    loadHistory(true);
    refreshClients();
    streamForever();
    every(STATUS_EVERY, refreshStatus);
    every(CLIENTS_EVERY, refreshClients);
    every(HISTORY_EVERY, () => loadHistory(false));
    setInterval(() => {
      for (const c of state.cards.values()) tickSince(c);
      if (!state.streamEver) drawCharts();
    }, 1000);
  }

  start();
})();
