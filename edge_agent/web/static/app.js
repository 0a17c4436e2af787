// edge-agent live page: plain JavaScript, no library, served by the agent (works without internet).
// Each page opens one Server-Sent Events stream; the agent sends a whole view a few times a second at
// most, and the page updates its elements in place (keyed by name), so focus and scroll stay put.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const main = document.getElementById("main");
  const live = document.getElementById("live");

  // ------------------------------------------------------------------ small DOM helpers
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function setText(node, text) {
    const s = String(text);
    if (node.textContent !== s) node.textContent = s;
  }

  function setClass(node, cls) {
    if (node.getAttribute("class") !== cls) node.setAttribute("class", cls);
  }

  function setAttr(node, name, value) {
    const s = String(value);
    if (node.getAttribute(name) !== s) node.setAttribute(name, s);
  }

  // Children of `parent` follow `items`: an element per key, made once, updated on every call.
  function sync(parent, items, keyOf, make, update) {
    const old = new Map();
    for (const child of Array.from(parent.children)) old.set(child.dataset.key, child);
    let prev = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = old.get(key);
      if (node) old.delete(key);
      else {
        node = make(item);
        node.dataset.key = key;
      }
      update(node, item);
      const want = prev ? prev.nextSibling : parent.firstChild;
      if (node !== want) parent.insertBefore(node, want);
      prev = node;
    }
    for (const node of old.values()) node.remove();
  }

  // ------------------------------------------------------------------ formatting
  function num(v, unit) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (unit === "%") return (v * 100).toFixed(1);
    const a = Math.abs(v);
    if (Number.isInteger(v) && a < 1e9) return String(v);
    if (a >= 10000) return v.toFixed(0);
    if (a >= 100) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    if (a === 0) return "0";
    return v.toPrecision(3);
  }

  function withUnit(v, unit) {
    const n = num(v, unit);
    return n === "–" || !unit ? n : `${n} ${unit}`;
  }

  function clock(ms) {
    if (!ms) return "–";
    const d = new Date(ms);
    const pad = (x) => String(x).padStart(2, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function ago(ms, now) {
    if (!ms) return "never";
    const s = Math.max(0, (now - ms) / 1000);
    if (s < 1.5) return "just now";
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  }

  function span(ms) {
    const s = Math.max(0, ms / 1000);
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KB`;
    if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MB`;
    return `${(n / 1073741824).toFixed(2)} GB`;
  }

  function uptime(s) {
    if (s === undefined) return "–";
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }

  const STATE_TEXT = { online: "online", offline: "offline", stale: "no fresh data" };

  function qualityClass(q) {
    if (q === "GOOD") return "pill good";
    if (q.startsWith("UNCERTAIN")) return "pill uncertain";
    return "pill bad";
  }

  function machineLink(name) {
    return `/machines/${encodeURIComponent(name)}`;
  }

  // ------------------------------------------------------------------ the stream
  let stream = null;

  function open(url, onData) {
    if (stream) stream.close();
    stream = new EventSource(url);
    stream.onopen = () => {
      setText(live, "live");
      setClass(live, "live on");
    };
    stream.onmessage = (event) => {
      setText(live, "live");
      setClass(live, "live on");
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (err) {
        return; // a half-written message after a restart: the next one is whole
      }
      header(data.agent);
      onData(data);
    };
    stream.onerror = () => {
      setText(live, "reconnecting…");
      setClass(live, "live off");
    };
  }

  function header(agent) {
    if (!agent) return;
    setText(document.getElementById("agent-name"), agent.name);
    const badge = document.getElementById("alarm-badge");
    setText(badge, agent.active_alarms);
    badge.hidden = !agent.active_alarms;
    setAttr(badge, "aria-label", `${agent.active_alarms} active alarms`);
  }

  function stat(label) {
    const v = el("div", { class: "v" });
    return { node: el("div", { class: "stat" }, el("div", { class: "k", text: label }), v), v };
  }

  function factList(pairs) {
    const dl = el("dl", { class: "facts" });
    const out = {};
    for (const [key, label] of pairs) {
      out[key] = el("dd");
      dl.append(el("dt", { text: label }), out[key]);
    }
    return { node: dl, dd: out };
  }

  function figureBox(f) {
    const v = el("div", { class: "v" });
    return el("div", { class: "figure" }, el("div", { class: "k", text: f.label || f.name }), v);
  }

  function updateFigure(box, f) {
    const v = box.querySelector(".v");
    const unit = f.unit === "%" ? "%" : f.unit;
    const text = num(f.value, f.unit);
    if (v.firstChild && v.firstChild.nodeType === 3 && v.childNodes.length === 2) {
      setText(v.firstChild, text);
      setText(v.lastChild, text === "–" ? "" : unit);
    } else {
      v.replaceChildren(document.createTextNode(text), el("small", { text: text === "–" ? "" : unit }));
    }
  }

  // ------------------------------------------------------------------ overview
  function overview() {
    document.title = "Machines · edge-agent";
    const h1 = el("h1", { text: "Machines" });
    const sub = el("p", { class: "sub", text: "Every configured machine, connected or not." });
    const stats = {
      online: stat("Machines online"),
      alarms: stat("Active alarms"),
      values: stat("Values read"),
      uptime: stat("Agent uptime"),
    };
    const strip = el("div", { class: "stats" }, ...Object.values(stats).map((s) => s.node));
    const cards = el("div", { class: "cards", id: "machines" });
    main.replaceChildren(h1, sub, strip, cards);

    function make(m) {
      const link = el("a", { href: machineLink(m.name), text: m.name });
      const pill = el("span", { class: "pill" });
      const facts = factList([
        ["last", "Last good read"],
        ["poll", "Poll interval"],
        ["rate", "Updates"],
        ["alarms", "Active alarms"],
      ]);
      const figures = el("div", { class: "figures" });
      const card = el(
        "article",
        { class: "card machine", "aria-label": `Machine ${m.name}` },
        el("div", { class: "title" }, link, pill),
        el("div", { class: "kind" }),
        facts.node,
        figures,
      );
      card._parts = { pill, facts: facts.dd, figures, kind: card.querySelector(".kind") };
      return card;
    }

    return (data) => {
      const now = data.agent.now_ms;
      const online = data.machines.filter((m) => m.state === "online").length;
      setText(stats.online.v, `${online} / ${data.machines.length}`);
      setText(stats.alarms.v, data.agent.active_alarms);
      setClass(stats.alarms.v, data.agent.active_alarms ? "v bad" : "v");
      setText(stats.values.v, num(data.agent.health.values_read));
      setText(stats.uptime.v, uptime(data.agent.health.uptime_s));
      if (!data.machines.length) {
        cards.replaceChildren(el("p", { class: "empty", text: "No machine is configured." }));
        return;
      }
      sync(cards, data.machines, (m) => m.name, make, (card, m) => {
        const p = card._parts;
        setClass(card, `card machine ${m.state}`);
        setClass(p.pill, `pill ${m.state}`);
        setText(p.pill, STATE_TEXT[m.state] || m.state);
        setText(p.kind, `${m.about} · ${m.endpoint}`);
        setText(p.facts.last, ago(m.last_good_ms, now));
        setText(p.facts.poll, `${num(m.poll_interval_s)} s`);
        setText(p.facts.rate, m.updates_per_s === null ? "–" : `${num(m.updates_per_s)} /s`);
        setText(p.facts.alarms, m.active_alarms);
        sync(p.figures, m.figures, (f) => f.key, figureBox, updateFigure);
      });
    };
  }

  // ------------------------------------------------------------------ control chart (SVG)
  function niceTicks(lo, hi, count) {
    const span = hi - lo;
    const step0 = span / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
    return ticks;
  }

  function makeChart(c) {
    const svgNode = svg("svg", { role: "img", "aria-label": `Control chart of ${c.signal}` });
    const parts = {};
    for (const name of ["grid", "limits", "series", "points", "labels", "note"]) {
      parts[name] = svg("g", {});
      svgNode.append(parts[name]);
    }
    parts.line = svg("polyline", { class: "series" });
    parts.series.append(parts.line);
    const value = el("b");
    const cpk = el("span", { class: "pill cpk" });
    const head = el(
      "div",
      { class: "chart-head" },
      el("h3", { text: c.signal }),
      el("span", { class: "now" }, "now ", value, " ", cpk),
    );
    const legend = el(
      "div",
      { class: "legend", "aria-hidden": "true" },
      el("span", {}, el("i", { class: "l-cl" }), "CL"),
      el("span", {}, el("i", { class: "l-ctl" }), "UCL / LCL"),
      el("span", {}, el("i", { class: "l-spec" }), "LSL / USL"),
      el("span", {}, el("i", { class: "l-pt" }), "point"),
      el("span", {}, el("i", { class: "l-hit" }), "rule hit"),
    );
    const plot = el("div", { class: "plot" }, svgNode);
    const card = el("section", { class: "card chart", id: `chart-${c.signal}` }, head, plot, legend);
    card._parts = { ...parts, svg: svgNode, value, cpk, plot };
    return card;
  }

  function drawChart(card, c) {
    const p = card._parts;
    setText(p.value, withUnit(c.value, c.unit));
    if (c.cpk === null) {
      setText(p.cpk, "Cpk –");
      setClass(p.cpk, "pill cpk");
    } else {
      setText(p.cpk, `Cpk ${c.cpk.toFixed(2)}`);
      setClass(p.cpk, `pill cpk ${c.cpk >= 1.33 ? "good" : c.cpk >= 1 ? "uncertain" : "bad"}`);
    }
    const W = Math.max(240, Math.round(p.plot.clientWidth || 520));
    const H = window.innerWidth <= 600 ? 200 : 220;
    setAttr(p.svg, "viewBox", `0 0 ${W} ${H}`);
    const m = { l: 50, r: 72, t: 12, b: 24 };
    const pts = c.points;
    const limits = [
      ["ucl", "UCL", "ctl"],
      ["cl", "CL", "cl"],
      ["lcl", "LCL", "ctl"],
      ["usl", "USL", "spec"],
      ["lsl", "LSL", "spec"],
    ].filter(([key]) => c[key] !== null && c[key] !== undefined);
    const ys = pts.map((q) => q[1]).concat(limits.map(([key]) => c[key]));
    let lo = Math.min(...ys);
    let hi = Math.max(...ys);
    if (!ys.length) {
      lo = 0;
      hi = 1;
    }
    if (hi - lo < 1e-9) {
      const pad = Math.abs(hi) * 0.01 || 1;
      lo -= pad;
      hi += pad;
    }
    const padY = (hi - lo) * 0.08;
    lo -= padY;
    hi += padY;
    const y = (v) => m.t + (H - m.t - m.b) * (1 - (v - lo) / (hi - lo));
    const n = pts.length;
    const x = (i) => m.l + (W - m.l - m.r) * (n <= 1 ? 0.5 : i / (n - 1));

    const ticks = niceTicks(lo, hi, 4);
    const grid = [];
    for (const t of ticks) {
      grid.push(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }));
      const label = svg("text", { class: "axis", x: m.l - 6, y: y(t) + 4, "text-anchor": "end" });
      label.textContent = num(t);
      grid.push(label);
    }
    if (n) {
      for (const [i, anchor] of [[0, "start"], [n - 1, "end"]]) {
        const label = svg("text", { class: "axis", x: x(i), y: H - 6, "text-anchor": anchor });
        label.textContent = clock(pts[i][0]);
        grid.push(label);
      }
    }
    p.grid.replaceChildren(...grid);

    const lines = [];
    const labels = [];
    let lastLabelY = -100;
    const sorted = limits.slice().sort((a, b) => c[b[0]] - c[a[0]]);
    for (const [key, name, cls] of sorted) {
      const yy = y(c[key]);
      lines.push(svg("line", { class: cls, x1: m.l, x2: W - m.r, y1: yy, y2: yy }));
      const ly = Math.max(yy + 4, lastLabelY + 12); // labels of close limits stack instead of overlapping
      lastLabelY = ly;
      const label = svg("text", { class: `lbl ${cls}`, x: W - m.r + 6, y: ly });
      label.textContent = `${name} ${num(c[key])}`;
      labels.push(label);
    }
    p.limits.replaceChildren(...lines);
    p.labels.replaceChildren(...labels);

    setAttr(p.line, "points", pts.map((q, i) => `${x(i).toFixed(1)},${y(q[1]).toFixed(1)}`).join(" "));
    const circles = [];
    let hits = 0;
    pts.forEach((q, i) => {
      const hit = q[2] !== null;
      if (hit) hits += 1;
      const dot = svg("circle", { class: hit ? "pt hit" : "pt", cx: x(i).toFixed(1), cy: y(q[1]).toFixed(1), r: hit ? 4.5 : 2.4 });
      if (hit) {
        const title = svg("title", {});
        title.textContent = `${clock(q[0])}  ${num(q[1])} ${c.unit}: ${q[2]}`;
        dot.append(title);
      }
      circles.push(dot);
    });
    p.points.replaceChildren(...circles);

    const notes = [];
    if (c.cl === null) {
      const t = svg("text", { class: "note", x: (m.l + W - m.r) / 2, y: m.t + 18, "text-anchor": "middle" });
      t.textContent = `Estimating the control limits from the first ${c.baseline} samples…`;
      notes.push(t);
    }
    p.note.replaceChildren(...notes);
    setAttr(
      p.svg,
      "aria-label",
      `Control chart of ${c.signal}: ${n} points, CL ${num(c.cl)}, UCL ${num(c.ucl)}, LCL ${num(c.lcl)}, ${hits} rule hits`,
    );
  }

  // ------------------------------------------------------------------ machine page
  function machinePage(name) {
    document.title = `${name} · edge-agent`;
    const crumbs = el("div", { class: "crumbs" }, el("a", { href: "/", text: "Machines" }), ` / ${name}`);
    const h1 = el("h1", { text: name });
    const pill = el("span", { class: "pill" });
    const kind = el("p", { class: "sub" });
    const facts = factList([
      ["endpoint", "Endpoint"],
      ["last", "Last good read"],
      ["poll", "Poll interval"],
      ["rate", "Updates"],
      ["alarms", "Active alarms"],
    ]);
    const head = el("div", { class: "head" }, el("div", {}, crumbs, h1, pill, kind), el("div", { class: "card" }, facts.node));
    const demoCount = el("span", { class: "on" });
    const demoList = el("div", { class: "faults" });
    const demoBox = el(
      "details",
      { class: "card demo", hidden: true, id: "demo-faults" },
      el("summary", {}, "Demo: simulator faults", demoCount),
      el(
        "div",
        { class: "inner" },
        el("p", { text: "Switch a fault of this simulated machine on or off while the demo runs. Spec and band alarms follow within a few cycles; chart rules once the control limits are set." }),
        demoList,
      ),
    );
    const panels = el("div", { class: "panels" });
    const charts = el("div", { class: "charts" });
    const alarmsWrap = el("div", {});
    const rows = el("tbody");
    const table = el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        {},
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            ...["Signal", "Value", "Unit", "Quality", "CL", "UCL", "LCL", "Cpk", "Updated"].map((t, i) =>
              el("th", { class: i === 1 || (i >= 4 && i <= 7) ? "num" : null, scope: "col", text: t }),
            ),
          ),
        ),
        rows,
      ),
    );
    main.replaceChildren(
      head,
      demoBox,
      el("h2", { text: "Equipment" }),
      panels,
      el("h2", { text: "Control charts" }),
      charts,
      el("h2", { text: "Active alarms" }),
      alarmsWrap,
      el("h2", { text: "Signals" }),
      table,
    );
    const alarmTable = alarmList(alarmsWrap, false, "No active alarm on this machine.");
    let drawn = null;
    let lastData = null;

    function demo(faults) {
      demoBox.hidden = false;
      const on = faults.filter((f) => f.active).length;
      setText(demoCount, on ? `${on} on` : "");
      sync(
        demoList,
        faults,
        (f) => f.name,
        (f) => {
          const b = el("button", { type: "button", class: "fault", title: f.description }, el("b", { text: f.name }), el("span", { text: f.description }));
          b.addEventListener("click", () => switchFault(b, f.name));
          return b;
        },
        (b, f) => {
          if (!b.disabled) setAttr(b, "aria-pressed", f.active ? "true" : "false");
        },
      );
    }

    async function switchFault(button, fault) {
      const on = button.getAttribute("aria-pressed") !== "true";
      button.disabled = true;
      try {
        const res = await fetch("/api/demo/faults", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ machine: name, fault, on }),
        });
        if (res.ok) {
          const body = await res.json();
          button.disabled = false;
          demo(body.faults[name] || []);
        } else {
          button.disabled = false;
          button.title = await res.text();
        }
      } catch (err) {
        button.disabled = false;
      }
    }

    function render(data) {
      lastData = data;
      const m = data.machine;
      const now = data.agent.now_ms;
      setClass(pill, `pill ${m.state}`);
      setText(pill, STATE_TEXT[m.state] || m.state);
      setText(kind, `${m.about} · profile ${m.profile} · ${m.signals} signals`);
      setText(facts.dd.endpoint, m.endpoint);
      setText(facts.dd.last, ago(m.last_good_ms, now));
      setText(facts.dd.poll, `${num(m.poll_interval_s)} s`);
      setText(facts.dd.rate, m.updates_per_s === null ? "–" : `${num(m.updates_per_s)} /s`);
      setText(facts.dd.alarms, m.active_alarms);
      if (data.demo && data.faults) demo(data.faults);

      if (!data.panels.length) {
        if (!panels.querySelector(".empty")) panels.replaceChildren(el("p", { class: "empty", text: "No equipment indicator for this profile yet." }));
      } else {
        if (panels.querySelector(".empty")) panels.replaceChildren();
        sync(
          panels,
          data.panels,
          (p) => p.key,
          (p) => el("section", { class: "card panel" }, el("h3", { text: p.title }), el("div", { class: "figures" })),
          (card, p) => sync(card.querySelector(".figures"), p.fields, (f) => f.name, figureBox, updateFigure),
        );
      }

      if (!data.charts.length) {
        if (!charts.querySelector(".empty")) charts.replaceChildren(el("p", { class: "empty", text: "No signal of this machine has a control chart." }));
      } else {
        if (charts.querySelector(".empty")) charts.replaceChildren();
        sync(charts, data.charts, (c) => c.signal, makeChart, drawChart);
      }
      drawn = data.charts;

      alarmTable(data.alarms, now);

      sync(
        rows,
        data.signals,
        (s) => s.name,
        () => el("tr", {}, ...Array.from({ length: 9 }, (_, i) => el(i === 0 ? "th" : "td", { scope: i === 0 ? "row" : null, class: i === 1 || (i >= 4 && i <= 7) ? "num" : null }))),
        (tr, s) => {
          const c = tr.children;
          setText(c[0], s.name);
          setText(c[1], num(s.value));
          setText(c[2], s.unit);
          if (!c[3].firstChild) c[3].append(el("span"));
          setClass(c[3].firstChild, qualityClass(s.quality));
          setText(c[3].firstChild, s.quality);
          setText(c[4], num(s.cl));
          setText(c[5], num(s.ucl));
          setText(c[6], num(s.lcl));
          setText(c[7], s.cpk === null ? "–" : s.cpk.toFixed(2));
          setText(c[8], clock(s.t_ms));
        },
      );
    }

    window.addEventListener("resize", () => {
      if (drawn && lastData) sync(charts, lastData.charts, (c) => c.signal, makeChart, drawChart);
    });
    return render;
  }

  // ------------------------------------------------------------------ alarms
  function alarmList(parent, withClear, emptyText) {
    const body = el("tbody");
    const cols = ["Machine", "Signal", "Rule", "Severity", "Started", withClear ? "Cleared" : "For", "Value", "Limit", "Message"];
    const wrap = el(
      "div",
      { class: "table-wrap" },
      el("table", {}, el("thead", {}, el("tr", {}, ...cols.map((t) => el("th", { scope: "col", class: t === "Value" || t === "Limit" ? "num" : null, text: t })))), body),
    );
    const empty = el("p", { class: "empty", text: emptyText });
    parent.replaceChildren(empty);
    return (alarms, now) => {
      if (!alarms.length) {
        if (parent.firstChild !== empty) parent.replaceChildren(empty);
        return;
      }
      if (parent.firstChild !== wrap) parent.replaceChildren(wrap);
      sync(
        body,
        alarms,
        (a) => `${a.machine}|${a.signal}|${a.rule}|${a.start_ms}|${a.clear_ms === null ? "" : "c"}`,
        (a) => {
          const tr = el("tr", {}, ...cols.map((t) => el("td", { class: t === "Value" || t === "Limit" ? "num" : t === "Message" ? "msg" : null })));
          tr.children[0].append(el("a", { href: machineLink(a.machine), text: a.machine }));
          tr.children[3].append(el("span"));
          return tr;
        },
        (tr, a) => {
          const c = tr.children;
          setClass(tr, a.clear_ms === null ? "bad-row" : "");
          setText(c[1], a.signal);
          setText(c[2], a.rule);
          setClass(c[3].firstChild, `pill ${a.severity}`);
          setText(c[3].firstChild, a.severity);
          setText(c[4], clock(a.start_ms));
          if (withClear) setText(c[5], a.clear_ms === null ? "active" : `${clock(a.clear_ms)}${a.start_ms ? ` (${span(a.clear_ms - a.start_ms)})` : ""}`);
          else setText(c[5], a.start_ms ? span(now - a.start_ms) : "–");
          setText(c[6], withUnit(a.value, a.unit));
          setText(c[7], withUnit(a.limit, a.unit));
          setText(c[8], a.message);
        },
      );
    };
  }

  function alarmsPage() {
    document.title = "Alarms · edge-agent";
    const activeWrap = el("div", { id: "active-alarms" });
    const recentWrap = el("div", { id: "recent-alarms" });
    main.replaceChildren(
      el("h1", { text: "Alarms" }),
      el("p", { class: "sub", text: "Alarms of every machine since the agent started, newest first." }),
      el("h2", { text: "Active" }),
      activeWrap,
      el("h2", { text: "Recent" }),
      recentWrap,
    );
    const active = alarmList(activeWrap, false, "No active alarm.");
    const recent = alarmList(recentWrap, true, "No alarm since the agent started.");
    return (data) => {
      active(data.active, data.agent.now_ms);
      recent(data.recent, data.agent.now_ms);
    };
  }

  // ------------------------------------------------------------------ sinks
  const HEALTH = [
    ["devices", "Devices configured"],
    ["devices_connected", "Devices connected"],
    ["polls", "Polls"],
    ["values_read", "Values read"],
    ["overruns", "Poll overruns"],
    ["read_errors", "Read errors"],
    ["uptime_s", "Uptime"],
  ];

  function sinksPage() {
    document.title = "Sinks · edge-agent";
    const body = el("tbody");
    const cols = ["Sink", "Connection", "Outbox records", "Outbox size", "Sent", "Dropped", "Retries"];
    const wrap = el(
      "div",
      { class: "table-wrap" },
      el("table", {}, el("thead", {}, el("tr", {}, ...cols.map((t, i) => el("th", { scope: "col", class: i >= 2 ? "num" : null, text: t })))), body),
    );
    const empty = el("p", { class: "empty", text: "No sink is configured: nothing read is published." });
    const sinkBox = el("div", {});
    const health = factList(HEALTH);
    main.replaceChildren(
      el("h1", { text: "Sinks and outbox" }),
      el("p", { class: "sub", text: "Where the values go, and what waits in the outbox on disk until the sink acknowledges it." }),
      sinkBox,
      el("h2", { text: "Agent health" }),
      el("div", { class: "card health" }, health.node),
    );
    return (data) => {
      if (!data.sinks.length) {
        if (sinkBox.firstChild !== empty) sinkBox.replaceChildren(empty);
      } else {
        if (sinkBox.firstChild !== wrap) sinkBox.replaceChildren(wrap);
        sync(
          body,
          data.sinks,
          (s) => s.name,
          () => el("tr", {}, el("th", { scope: "row" }), el("td", {}, el("span")), ...cols.slice(2).map(() => el("td", { class: "num" }))),
          (tr, s) => {
            const c = tr.children;
            setText(c[0], s.name);
            const state = s.connected === null ? ["pill", "–"] : s.connected ? ["pill good", "connected"] : ["pill bad", "disconnected"];
            setClass(c[1].firstChild, state[0]);
            setText(c[1].firstChild, state[1]);
            setText(c[2], num(s.outbox_records));
            setText(c[3], bytes(s.outbox_bytes));
            setText(c[4], num(s.sent));
            setText(c[5], num(s.dropped));
            setText(c[6], num(s.retries));
          },
        );
      }
      const h = data.agent.health;
      for (const [key] of HEALTH) setText(health.dd[key], key === "uptime_s" ? uptime(h[key]) : num(h[key]));
    };
  }

  // ------------------------------------------------------------------ routing
  function route() {
    const path = location.pathname;
    const nav = path.startsWith("/alarms") ? "alarms" : path.startsWith("/sinks") ? "sinks" : "machines";
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (path === "/alarms") return open("/api/alarms/stream", alarmsPage());
    if (path === "/sinks") return open("/api/sinks/stream", sinksPage());
    const match = path.match(/^\/machines\/([^/]+)$/);
    if (match) {
      const name = decodeURIComponent(match[1]);
      return open(`/api/machines/${encodeURIComponent(name)}/stream`, machinePage(name));
    }
    return open("/api/overview/stream", overview());
  }

  route();
})();
