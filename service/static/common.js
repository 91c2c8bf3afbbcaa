"use strict";
// Shared by the overview and the job page: the access token, event streams, formatting.
// The token comes from the page's own ?token= (browsers cannot set headers on EventSource),
// and is passed on to every API and event-stream URL.

const crest = (() => {
  const token = new URLSearchParams(location.search).get("token");

  /** path with this page's ?token= appended, when it has one. */
  function withToken(path) {
    if (!token) return path;
    return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  /**
   * Follow a server-sent event stream of JSON documents.
   * onData(doc) gets each event; onState("live" | "reconnecting" | "closed") the connection.
   * EventSource reconnects by itself after a dropped connection; it gives up (CLOSED) on an
   * HTTP error such as 401 or 404.
   */
  function follow(path, onData, onState) {
    const source = new EventSource(withToken(path));
    source.onopen = () => onState("live");
    source.onerror = () =>
      onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    source.onmessage = (event) => onData(JSON.parse(event.data), source);
    return source;
  }

  /** Say what a closed stream means (the JSON API tells us why it refused). */
  async function explainFailure(path) {
    try {
      const response = await fetch(withToken(path));
      if (response.status === 401) return "unauthorized: open this page with ?token=…";
      if (response.status === 404) return "unknown job";
      return `server answered ${response.status}`;
    } catch {
      return "server unreachable";
    }
  }

  /**
   * Steps trained. summary.step counts up to the last decided check, so a finished job can
   * show a few steps short of its budget; once finished, every step was trained.
   */
  function stepsDone(summary) {
    return summary.finished ? summary.total_steps : summary.step;
  }

  const fmt = {
    num(v, digits = 3) {
      if (v === Infinity) return "∞";
      if (v === null || v === undefined || !isFinite(v)) return "–";
      if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(2);
      return Number(v.toPrecision(digits)).toString();
    },
    /** Compact: 3 significant digits, with k, M, G from a thousand up. */
    si(v) {
      const big = [[1e9, "G"], [1e6, "M"], [1e3, "k"]].find(([d]) => Math.abs(v) >= d);
      return big && isFinite(v) ? Number((v / big[0]).toPrecision(3)) + big[1] : fmt.num(v);
    },
    int(v) {
      return v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US");
    },
    pct(v) {
      return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%";
    },
    secs(v) {
      if (v === null || v === undefined) return "–";
      if (v < 0.01) return (1000 * v).toFixed(1) + " ms";  // an RPC's fraction of a ms
      return v < 1 ? (1000 * v).toFixed(0) + " ms" : v.toFixed(2) + " s";
    },
  };

  /** Show the stream state in the page header and as body[data-state] for tests. */
  function showState(state, text) {
    document.body.dataset.state = state;
    const badge = document.getElementById("state");
    badge.textContent = text || state;
    badge.className = "state " + state;
  }

  return { token, withToken, follow, explainFailure, stepsDone, fmt, showState };
})();
