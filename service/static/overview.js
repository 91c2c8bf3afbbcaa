"use strict";
// The jobs overview: one row per job, refreshed by the /api/events stream; below it the
// gRPC server's calls per method, refreshed by /api/rpc/events.

(() => {
  const { fmt } = crest;
  const body = document.querySelector("#jobs tbody");
  const rpcBody = document.querySelector("#rpcs tbody");

  function cell(text, title) {
    const td = document.createElement("td");
    td.textContent = text;
    if (title) td.title = title;
    return td;
  }

  function row(job) {
    const tr = document.createElement("tr");
    const name = cell("", job.job_id);
    name.className = "name";
    const link = document.createElement("a");
    link.href = crest.withToken("/jobs/" + encodeURIComponent(job.job_id));
    link.textContent = job.name;
    name.append(link);
    if (job.name !== job.job_id) {
      const id = document.createElement("span");
      id.className = "id";
      id.textContent = job.job_id;
      name.append(id);
    }
    const progress = document.createElement("td");
    const bar = document.createElement("progress");
    bar.max = job.total_steps;
    bar.value = crest.stepsDone(job);
    progress.append(bar, job.finished ? " done" : "");
    const error = job.last_relative_error;
    const check = cell(`${fmt.num(error)} / ${fmt.num(job.tau)}`);
    if (error !== null && error > job.tau) check.className = "warn";
    const fallbacks = cell(fmt.int(job.fallbacks));
    if (job.fallbacks > 0) fallbacks.className = "warn";
    const strategy = cell(job.strategy + " ", job.decision);
    if (job.mode !== null) {
      const badge = document.createElement("span");
      badge.className = "mode " + job.mode;
      badge.textContent = job.mode;
      strategy.append(badge);
    }
    const gain = job.gain === null ? null : Number(job.gain);
    const monitor = cell(fmt.si(gain));  // the embedding gain: a selection check
    tr.append(
      name,
      progress,
      cell(`${fmt.int(crest.stepsDone(job))} / ${fmt.int(job.total_steps)}`),
      strategy,
      monitor,
      cell(job.region_id ?? "–"),
      cell(`${job.check_interval ?? "–"} / ${job.num_coresets ?? "–"}`),
      check,
      cell(`${fmt.int(job.pool_size)} / ${fmt.int(job.num_examples)}`),
      cell(fmt.pct(job.learned_fraction)),
      cell(fmt.int(job.selections)),
      fallbacks,
      cell(fmt.secs(job.last_selection_seconds)),
      cell(fmt.pct(job.selection_share)),
      cell(fmt.num(job.batches_per_second)),
    );
    return tr;
  }

  function rpcRow(m) {
    const failed = Object.entries(m.codes).filter(([code]) => code !== "OK");
    const errors = cell(fmt.int(m.errors));
    if (m.errors > 0) errors.className = "warn";
    const codes = cell(failed.map(([code, n]) => `${code} ${fmt.int(n)}`).join(" · ") || "–");
    codes.className = "codes";
    const tr = document.createElement("tr");
    tr.append(
      cell(m.method),
      cell(fmt.int(m.calls)),
      errors,
      codes,
      cell(fmt.secs(m.mean_seconds)),
      cell(fmt.secs(m.p50_seconds)),
      cell(fmt.secs(m.p99_seconds)),
    );
    return tr;
  }

  let rpcUpdates = 0;
  crest.follow(
    "/api/rpc/events",
    (methods) => {
      rpcBody.replaceChildren(...methods.map(rpcRow));
      document.getElementById("rpc-wrap").hidden = methods.length === 0;
      document.getElementById("rpc-empty").hidden = methods.length > 0;
      document.body.dataset.rpcUpdates = String(++rpcUpdates);
    },
    () => {},  // the job list's stream shows the connection's state
  );

  let updates = 0;
  crest.follow(
    "/api/events",
    (jobs) => {
      body.replaceChildren(...jobs.map(row));
      document.getElementById("empty").hidden = jobs.length > 0;
      document.body.dataset.updates = String(++updates);
    },
    async (state) => {
      crest.showState(state, state === "closed" ? await crest.explainFailure("/api/jobs") : state);
    },
  );
})();
