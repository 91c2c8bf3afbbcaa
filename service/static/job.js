"use strict";
// The live job page: every server-sent event carries the job's full detail (the JSON API's
// JobDetail); each chart below turns it into uPlot data. Step charts share the x axis
// "step" and one cursor, so a region switch can be followed across them.

(() => {
  const { fmt } = crest;
  const {
    line, stepped, dots, bars, shade, axis, rightAxis, categories, colors, palette,
  } = charts;
  const ERROR_FLOOR = 1e-4; // the log-scale error chart draws an error of 0 at this floor
  const STEP = { label: "step", sync: "steps" };
  const MAX_DECISIONS = 8; // entries in the decisions list
  // Regions whose batches were not coresets, shaded on the gain chart.
  const SHADES = [
    ["random", shade("random batches", "rgba(230, 159, 0, 0.25)")],
    ["fallback", shade("fallback", "rgba(213, 94, 0, 0.35)")],
  ];

  const jobId = decodeURIComponent(location.pathname.replace(/^\/jobs\//, ""));
  document.getElementById("home").href = crest.withToken("/");

  /** The job's human name in the header and the title; its id beside it when they differ. */
  function showName(name) {
    document.getElementById("job-name").textContent = name;
    const id = document.getElementById("job-id");
    id.textContent = jobId;
    id.hidden = name === jobId;
    document.title = `crest · ${name}`;
  }
  showName(jobId); // until the first event brings the name

  /** Where a region ends and why; the open region runs to the current step. */
  function regionEnd(region, summary) {
    if (region.end_step !== null) return [region.end_step, region.end_reason];
    return summary.finished ? [summary.total_steps, "budget"] : [summary.step, "running"];
  }

  /** Per-region values at each region's start, carried on to the current step. */
  function perRegion(d, values) {
    const regions = d.status.regions;
    const xs = regions.map((r) => r.start_step);
    const columns = values.map((f) => regions.map(f));
    const last = regions[regions.length - 1];
    const now = crest.stepsDone(d.summary);
    if (last && now > last.start_step) {
      xs.push(now);
      columns.forEach((c) => c.push(c[c.length - 1]));
    }
    return [xs, ...columns];
  }

  /** A positive finite number, else null (log scales; a gain may be "Infinity"). */
  const positive = (v) => (v !== null && Number(v) > 0 && isFinite(Number(v)) ? Number(v) : null);

  /** Tick labels of a log axis: powers of ten only, at most five of them. */
  function logTicks(u, splits) {
    const exponent = (v) => Math.log10(v);
    const powers = splits.filter((v) => Math.abs(exponent(v) - Math.round(exponent(v))) < 1e-9);
    const every = Math.ceil(powers.length / 5);
    return splits.map((v) => {
      const e = Math.round(exponent(v));
      if (!powers.includes(v) || e % every !== 0) return "";
      return v >= 1000 ? fmt.si(v) : v < 0.01 ? `1e${e}` : String(v);
    });
  }

  /** A log scale's range around its data and `extra` values (e.g. a threshold). */
  const logRange = (extra, empty) => (u, min, max) =>
    min === null
      ? empty
      : uPlot.rangeLog(Math.min(min, ...extra), Math.max(max, ...extra), 10, true);

  /**
   * Per-region columns at each region's first step, then a last row at the current step
   * (where the last region's shading ends): each `columns` function gets a region, or null
   * for that last row.
   */
  function monitorData(d, columns) {
    const rows = [...d.monitor];
    const now = crest.stepsDone(d.summary);
    if (rows.length && now > rows[rows.length - 1].start_step) rows.push(null);
    return [
      rows.map((r) => (r === null ? now : r.start_step)),
      ...columns.map((f) => rows.map((r) => f(r) ?? null)),
    ];
  }

  const views = {
    gain(d) {
      // auto's bars on its test's ratio: serving coresets, a job keeps them above
      // auto_min_gain / auto_switch_margin; serving random batches, coresets return above
      // auto_min_gain x auto_switch_margin.
      const stay = d.summary.auto_min_gain / d.summary.auto_switch_margin;
      const back = d.summary.auto_min_gain * d.summary.auto_switch_margin;
      return [{
        x: STEP,
        series: [
          line("gain", colors.blue, { points: { size: 5 } }),
          line("auto test", colors.green, { dash: [2, 2], points: { size: 7 } }),
          line("coresets stay", colors.red, { dash: [6, 4], points: { show: false } }),
          line("coresets return", colors.orange, { dash: [6, 4], points: { show: false } }),
          ...SHADES.map(([, series]) => series),
        ],
        axes: [axis("gain", { values: logTicks })],
        scales: {
          y: { distr: 3, range: logRange([stay, back], [0.1, 10]) },
          shade: charts.SHADE_SCALE,
        },
      }, monitorData(d, [
        (r) => r && positive(r.gain),
        // auto's test (measure regions): coresets' probe-loss rate over random batches', the
        // ratio the bars are for (the embedding gain is a selection check, not auto's input)
        (r) => r && r.loss_rate_random > 0 ? positive(r.loss_rate_coresets / r.loss_rate_random) : null,
        () => stay,
        () => back,
        ...SHADES.map(([mode]) => (r) => (r && r.mode === mode ? 1 : null)),
      ])];
    },

    monitor(d) {
      return [{
        x: STEP,
        series: [
          line("coreset", colors.blue, { points: { size: 5 } }),
          line("random batch", colors.orange, { points: { size: 5 } }),
        ],
        axes: [axis("relative error", { values: logTicks })],
        scales: { y: { distr: 3, range: logRange([], [0.01, 1]) } },
      }, monitorData(d, [
        (r) => r && positive(r.coreset_error),
        (r) => r && positive(r.random_error),
      ])];
    },

    trainers(d) {
      const ranks = d.trainers;
      return [{
        x: categories("rank"),
        series: [bars("selection work", colors.purple, 0.6)],
        axes: [axis("% of trainer time")],
        scales: {
          y: { range: (u, min, max) => [0, Math.min(100, Math.max(10, Math.ceil(max / 10) * 10))] },
        },
      }, [ranks.map((t) => t.rank), ranks.map((t) => 100 * t.selection_share)]];
    },

    regions(d) {
      const xs = [], length = [], reasons = { check: [], bound: [], budget: [], running: [] };
      for (const region of d.status.regions) {
        const [end, reason] = regionEnd(region, d.summary);
        const n = end - region.start_step;
        if (n <= 0) continue; // the open region before its first step
        xs.push(end);
        length.push(n);
        for (const [name, column] of Object.entries(reasons)) {
          column.push(name === reason ? n : null);
        }
      }
      return [{
        x: STEP,
        series: [
          line("length", colors.grey),
          dots("check > τ", colors.red),
          dots("use bound", colors.orange),
          dots("budget", colors.green),
          dots("running", colors.blue),
        ],
        axes: [axis("steps in region")],
        scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      }, [xs, length, reasons.check, reasons.bound, reasons.budget, reasons.running]];
    },

    checks(d) {
      const checks = d.status.regions.flatMap((r) => r.checks);
      const tau = d.summary.tau;
      const error = checks.map((c) => Math.max(c.relative_error, ERROR_FLOOR));
      return [{
        x: STEP,
        series: [
          line("error", colors.blue, { points: { size: 4 } }),
          line("τ", colors.red, { dash: [6, 4], points: { show: false } }),
          dots("above τ", colors.red, { points: { show: true, size: 6 } }),
        ],
        axes: [axis("relative error", { values: logTicks })],
        scales: {
          y: {
            distr: 3,
            range: (u, min, max) =>
              min === null ? [0.01, 1] : uPlot.rangeLog(Math.min(min, tau), Math.max(max, tau), 10, true),
          },
        },
      }, [
        checks.map((c) => c.step),
        error,
        checks.map(() => Math.max(tau, ERROR_FLOOR)),
        checks.map((c, i) => (c.relative_error > tau ? error[i] : null)),
      ]];
    },

    schedule(d) {
      return [{
        x: STEP,
        series: [
          stepped("k (check interval)", colors.blue, { scale: "k" }),
          stepped("P (coresets / rank)", colors.orange, { scale: "P" }),
        ],
        axes: [axis("k", { scale: "k" }), rightAxis("P", "P")],
        scales: {
          k: { range: (u, min, max) => [0, Math.max(2, max + 1)] },
          P: { range: (u, min, max) => [0, Math.max(2, max * 1.2)] },
        },
      }, perRegion(d, [(r) => r.check_interval, (r) => r.num_coresets])];
    },

    pool(d) {
      const n = d.summary.num_examples;
      return [{
        x: STEP,
        series: [
          stepped("pool size", colors.blue, { scale: "n" }),
          stepped("learned %", colors.orange, { scale: "%" }),
        ],
        axes: [axis("examples", { scale: "n" }), rightAxis("%", "learned %")],
        scales: {
          n: { range: (u, min, max) => [0, n] },
          "%": { range: (u, min, max) => [0, Math.max(10, Math.ceil(max / 10) * 10)] },
        },
      }, perRegion(d, [(r) => r.pool_size, (r) => 100 * (1 - r.pool_size / n)])];
    },

    classes(d) {
      const classes = d.classes;
      return [{
        x: categories("class"),
        series: [
          bars("class size", "#c6dbef", 0.8, { scale: "n" }),
          bars("in pool", colors.blue, 0.5, { scale: "n" }),
          dots("learned %", colors.orange, { scale: "%" }),
        ],
        axes: [axis("examples", { scale: "n" }), rightAxis("%", "learned %")],
        scales: {
          n: { range: (u, min, max) => [0, Math.max(1, max * 1.05)] },
          "%": { range: (u, min, max) => [0, Math.max(10, Math.ceil(max / 10) * 10)] },
        },
      }, [
        classes.map((c) => c.label),
        classes.map((c) => c.size),
        classes.map((c) => c.in_pool),
        classes.map((c) => 100 * c.learned_fraction),
      ]];
    },

    weights(d) {
      const regions = d.status.regions.filter((r) => r.weight_quantiles.length === 5);
      const q = (i) => regions.map((r) => r.weight_quantiles[i]);
      return [{
        x: STEP,
        series: [
          line("min", colors.sky, { width: 1, points: { show: false } }),
          line("q25", colors.blue, { width: 1, points: { show: false } }),
          line("median", colors.blue, { width: 2.5, points: { size: 4 } }),
          line("q75", colors.blue, { width: 1, points: { show: false } }),
          line("max", colors.sky, { width: 1, points: { show: false } }),
        ],
        bands: [
          { series: [4, 2], fill: "rgba(0, 114, 178, 0.25)" },
          { series: [5, 1], fill: "rgba(86, 180, 233, 0.12)" },
        ],
        axes: [axis("weight")],
        scales: {
          y: {
            distr: 3,
            range: (u, min, max) =>
              min === null ? [0.1, 10] : uPlot.rangeLog(Math.min(min, 0.5), Math.max(max, 2), 10, true),
          },
        },
      }, [regions.map((r) => r.start_step), q(0), q(1), q(2), q(3), q(4)]];
    },

    difficulty(d) {
      const regions = d.status.regions.filter((r) => r.selected_loss !== null);
      return [{
        x: STEP,
        series: [
          line("candidates", colors.grey, { points: { size: 4 } }),
          line("selected", colors.red, { points: { size: 4 } }),
        ],
        axes: [axis("mean loss")],
        scales: { y: { range: (u, min, max) => [0, Math.max(0.1, max * 1.1)] } },
      }, [
        regions.map((r) => r.start_step),
        regions.map((r) => r.candidate_loss),
        regions.map((r) => r.selected_loss),
      ]];
    },

    latency(d) {
      // One point per region (the newest event wins), at the region's first step.
      const byStep = new Map();
      for (const e of d.selections) if (e.start_step !== null) byStep.set(e.start_step, e);
      const events = [...byStep.values()].sort((a, b) => a.start_step - b.start_step);
      return [{
        x: STEP,
        series: [
          line("latency", colors.blue, { points: { size: 4 } }),
          dots("fallback (random batches)", colors.red),
        ],
        axes: [axis("seconds", { values: (u, splits) => splits.map((v) => fmt.secs(v)) })],
        scales: { y: { range: (u, min, max) => [0, Math.max(0.01, max * 1.15)] } },
      }, [
        events.map((e) => e.start_step),
        events.map((e) => e.seconds),
        events.map((e) => (e.fallback ? e.seconds : null)),
      ]];
    },

    rates(d) {
      const ranks = d.ranks.filter((r) => r.series.length > 0);
      const tables = ranks.map((r) => [
        r.series.map((p) => p.t),
        r.series.map((p) => p.steps_per_second),
      ]);
      return [{
        x: { label: "time", time: true },
        series: ranks.map((r, i) => line(`rank ${r.rank}`, palette[i % palette.length])),
        axes: [axis("batches / s")],
        scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] } },
      }, tables.length ? uPlot.join(tables) : [[]]];
    },
  };

  /** A new element with a class and children (text or elements). */
  function element(tag, className, ...children) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    el.append(...children);
    return el;
  }

  /** A card's headline figure, beside its title; `warn` colours it. */
  function figure(name, text, warn = false) {
    const el = document.getElementById("figure-" + name);
    el.textContent = text;
    el.className = warn ? "figure warn" : "figure";
  }

  /** The newest changes of mode or decision, newest first. */
  function decisions(d) {
    const changes = d.monitor.filter((r, i, all) =>
      i === 0 || r.mode !== all[i - 1].mode || r.decision !== all[i - 1].decision ||
      r.auto_test !== all[i - 1].auto_test);
    const list = document.getElementById("decisions");
    list.replaceChildren(...changes.slice(-MAX_DECISIONS).reverse().map((r) => element(
      "li", "",
      element("span", "at", `step ${fmt.int(r.start_step)}`), " ",
      element("span", `mode ${r.mode}`, r.mode), " ",
      r.auto_test ? `[auto test: ${r.auto_test}] ` : "",
      r.decision || "–",
    )));
    list.dataset.items = String(list.children.length);
  }

  /** The header's mode, the tiles and the cards' headline figures. */
  function summary(s) {
    showName(s.name);
    const checkWarn = s.last_relative_error !== null && s.last_relative_error > s.tau;
    // [label, value, tooltip, warn]
    const items = [
      ["region", s.region_id ?? "–", "current region"],
      [
        "k / P", `${s.check_interval ?? "–"} / ${s.num_coresets ?? "–"}`,
        "check interval / coresets per rank",
      ],
      [
        "check error / τ", `${fmt.num(s.last_relative_error)} / ${fmt.num(s.tau)}`,
        "|L_true − F| / L_true at the last check; above τ a new region starts", checkWarn,
      ],
      ["pool", `${fmt.int(s.pool_size)} / ${fmt.int(s.num_examples)}`, "examples in the pool"],
      ["learned", fmt.pct(s.learned_fraction), "excluded from the pool as learned"],
      ["selections", fmt.int(s.selections), "selections finished"],
      [
        "latency", fmt.secs(s.last_selection_seconds),
        `last selection; mean ${fmt.secs(s.mean_selection_seconds)}`,
      ],
      [
        "fallbacks", fmt.int(s.fallbacks),
        "selections that failed or timed out: random batches instead", s.fallbacks > 0,
      ],
      [
        "staleness", s.staleness === null ? "–" : fmt.int(s.staleness),
        `steps between the weights the current region was embedded with and its start ` +
        `(${s.selection_side} side: ${s.selection_side === "service" ?
          "the selectors embed, one region ahead" : "the ranks embed at the start"})`,
      ],
      ["ranks", fmt.int(s.world_size), "trainer ranks (data parallel)"],
      ["batches/s", fmt.num(s.batches_per_second), "summed over ranks"],
    ];
    document.getElementById("tiles").replaceChildren(...items.map(([label, value, title, warn]) => {
      const tile = element("div", warn ? "tile warn" : "tile", element("b", "", String(value)),
                           element("span", "", label));
      tile.title = title;
      return tile;
    }));
    const mode = document.getElementById("mode");
    mode.textContent = `${s.strategy} · ${s.mode ?? "–"}`;
    mode.className = "mode " + (s.mode ?? "");
    mode.title = `strategy ${s.strategy}; the current region's batches: ${s.decision ?? "–"}`;
    const gain = s.gain === null ? null : Number(s.gain);
    figure("gain", `embedding gain ${fmt.si(gain)}`);
    figure("trainers", `${fmt.pct(s.selection_share)} overall`);
    const progress = document.getElementById("progress");
    progress.max = s.total_steps;
    progress.value = crest.stepsDone(s);
    document.getElementById("step").textContent =
      `step ${fmt.int(crest.stepsDone(s))} / ${fmt.int(s.total_steps)}`;
  }

  /** The Difficulty card's figure: what the label-noise filter kept out of the newest
      selection (subset members whose loss was far above their class's). */
  function excluded(d) {
    if (!d.status.config.exclude_noisy) {
      figure("difficulty", "noise filter off");
      return;
    }
    const last = d.status.regions.filter((r) => r.selected_loss !== null).at(-1);
    figure("difficulty", last === undefined ? "–" : `${fmt.int(last.excluded)} excluded`);
  }

  function update(detail) {
    summary(detail.summary);
    decisions(detail);
    excluded(detail);
    for (const [name, view] of Object.entries(views)) {
      const el = document.getElementById("chart-" + name);
      try {
        const [spec, data] = view(detail);
        charts.draw(el, spec, data);
      } catch (err) {
        el.dataset.error = String(err);
        console.error(name, err);
      }
    }
  }

  const path = "/api/events/" + encodeURIComponent(jobId);
  let updates = 0;
  let finished = false;
  crest.follow(
    path,
    (detail, source) => {
      update(detail);
      document.body.dataset.updates = String(++updates);
      if (detail.summary.finished) {
        finished = true;
        source.close(); // the server ends the stream too; do not reconnect
        crest.showState("finished");
      }
    },
    async (state) => {
      if (finished) return;
      const text = state === "closed"
        ? await crest.explainFailure("/api/jobs/" + encodeURIComponent(jobId))
        : state;
      crest.showState(state, text);
    },
  );
})();
