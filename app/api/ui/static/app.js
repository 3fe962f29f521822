// The dashboard's one script, loaded from 'self' (no inline script, no eval):
// it refreshes the parts of a page marked data-poll, and follows a running
// job's events (data-live) over Server-Sent Events. Every piece of HTML it
// inserts was rendered, escaped and sanitised by the server, exactly as the
// page itself was; without it the pages still work, they just do not update.
"use strict";

(function () {
  function signIn() {
    const here = location.pathname + location.search;
    location.assign("/ui/sign-in?next=" + encodeURIComponent(here));
  }

  // data-poll="URL" data-every="ms": replace the element's content with URL's.
  function poll(el) {
    const every = Number(el.dataset.every) || 5000;
    let busy = false;
    async function tick() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(el.dataset.poll, {
          credentials: "same-origin",
          headers: { Accept: "text/html" },
          cache: "no-store",
        });
        if (response.status === 401) return signIn();
        if (response.ok) {
          const html = await response.text();
          if (html !== el.dataset.last) {
            el.innerHTML = html;
            el.dataset.last = html;
          }
        }
      } catch (err) {
        // offline or restarting: the next tick tries again
      } finally {
        busy = false;
      }
    }
    setInterval(tick, every);
    document.addEventListener("visibilitychange", tick);
  }

  // A running job: its events as they come, then its final summary and commits.
  function follow(timeline) {
    const state = document.getElementById("live-state");
    const url = timeline.dataset.live + "?after=" + encodeURIComponent(timeline.dataset.after || "0");
    const source = new EventSource(url);
    function replace(id, html) {
      const el = document.getElementById(id);
      if (el) el.innerHTML = html;
    }
    function nearBottom() {
      const doc = document.scrollingElement || document.documentElement;
      return doc.scrollHeight - doc.scrollTop - doc.clientHeight < 120;
    }
    source.addEventListener("item", function (event) {
      const stick = nearBottom();
      timeline.insertAdjacentHTML("beforeend", event.data);
      if (stick) timeline.lastElementChild.scrollIntoView({ block: "end" });
    });
    source.addEventListener("summary", function (event) { replace("summary", event.data); });
    source.addEventListener("git", function (event) { replace("git", event.data); });
    source.addEventListener("end", function (event) {
      source.close();
      if (state) state.textContent = event.data === "final" ? "" : "(live updates stopped: reload)";
    });
    source.addEventListener("open", function () { if (state) state.textContent = "live"; });
    source.addEventListener("error", function () {
      // EventSource reconnects by itself (from the last event id); a refusal
      // (a 401 after the session ended) closes it for good
      if (source.readyState === EventSource.CLOSED) {
        if (state) state.textContent = "(disconnected: reload)";
      } else if (state) {
        state.textContent = "(reconnecting…)";
      }
    });
  }

  document.querySelectorAll("[data-poll]").forEach(poll);
  const timeline = document.getElementById("timeline");
  if (timeline && timeline.dataset.live) follow(timeline);
})();
