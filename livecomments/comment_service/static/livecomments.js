/*
 * livecomments.js: the client of a video's live comments, as the stream protocol
 * (docs/stream-protocol.md) asks a client to be. Served by the comment service at
 * /livecomments.js; the viewer page is its first user.
 *
 *   const stream = new LiveComments.VideoStream("match-42", { base: "https://comments.example" });
 *   stream.addEventListener("comment", (e) => show(e.detail));     // the history API's view
 *   stream.addEventListener("state", (e) => status(e.detail));     // connecting | live | reconnecting
 *   stream.start(firstPage.resume);                                 // or start() to go live
 *
 * What it does for you:
 * - opens the stream through the comment service (which redirects to the node that
 *   hosts the video) and resumes with the last event id after any disconnect, with
 *   backoff: nothing is missed and nothing is delivered twice;
 * - follows `moved` to the node it names (only to an origin you trust) with the
 *   last event id;
 * - on `reset`, forgets its position and tells you to reload history ("reset");
 * - gives every comment as the history API shows it (the stream's compact frame
 *   filled in), and only its newest revision (`rev`): an older one never follows a
 *   newer one;
 * - while the stream is down, short-polls history after the last seq it had, so
 *   comments keep coming; it goes back to the stream as soon as it reconnects.
 *
 * Events (CustomEvent, the payload in `detail`): `comment` (a comment, reply, edit or
 * tombstone), `pinned` (the comment now pinned), `unpinned` (the comment no longer
 * pinned), `reactions` ({comments: {id: {name: count}}}), `viewers` ({count}),
 * `reset` ({reason, epoch}), `state` (the connection state). A history page's
 * `pinned` says what was pinned up to its `resume`; `pinned`/`unpinned` events follow.
 */
(function (global) {
  "use strict";

  const POLL_MS = 2000;
  const MAX_BACKOFF_MS = 15000;
  const DEFAULTS = { text: null, parent_id: null, status: "visible", edited_at: null, rev: 0 };

  // A frame's comment as the history API shows it: the video from the stream, the
  // position from the event id (a change frame carries the comment's own), and the
  // fields left out at their default.
  function fromStream(data, videoId, eventId) {
    const [epoch, seq] = String(eventId || "").split("-").map(Number);
    return { video_id: videoId, seq, epoch, ...DEFAULTS, ...data };
  }

  // Whether `origin` is one of `trusted` ("https://*.example.com" matches any host
  // under example.com, as in CSP).
  function trustedOrigin(origin, trusted) {
    return trusted.some((t) => {
      if (t === origin) return true;
      const m = /^(https?:\/\/)\*(\..+)$/.exec(t);
      return !!m && origin.startsWith(m[1]) && origin.slice(m[1].length).endsWith(m[2]) &&
        !origin.slice(m[1].length, -m[2].length).includes("/");
    });
  }

  // A `moved` event's URL (resolved against `base`) as a URL object, or null unless
  // it is http(s) on a trusted origin.
  function trustedStreamUrl(raw, base, trusted) {
    let u;
    try { u = new URL(raw, base); } catch (_) { return null; }
    return /^https?:$/.test(u.protocol) && trustedOrigin(u.origin, trusted) ? u : null;
  }

  class VideoStream extends EventTarget {
    /**
     * @param {string} videoId
     * @param {{base?: string, trustedOrigins?: string[], pollMs?: number}} options
     *   base: the comment service's origin (default: this page's);
     *   trustedOrigins: where a `moved` event may send the stream (default: base's
     *   origin; add the realtime nodes' origins).
     */
    constructor(videoId, options = {}) {
      super();
      this.videoId = videoId;
      this.base = (options.base || global.location.origin).replace(/\/$/, "");
      this.trustedOrigins = options.trustedOrigins || [new URL(this.base).origin];
      this.pollMs = options.pollMs || POLL_MS;
      this.lastEventId = null;   // the last sequenced event handled: where a reconnect resumes
      this.state = "idle";
      this._es = null;
      this._revs = new Map();    // comment id -> newest rev given out
      this._backoff = 1000;
      this._retry = null;
      this._poll = null;
      this._pollAfter = 0;
      this._closed = true;
    }

    /** Go live, from `resume` (a history page's `resume`, or a saved event id) if given. */
    start(resume) {
      this._closed = false;
      if (resume) this.lastEventId = resume;
      this._open(this._streamUrl());
    }

    /** Where to resume from, unless the stream already has a position (after a reset). */
    offerResume(resume) {
      if (!this.lastEventId && resume) this.lastEventId = resume;
    }

    close() {
      this._closed = true;
      clearTimeout(this._retry); this._retry = null;
      this._stopPolling();
      if (this._es) { this._es.close(); this._es = null; }
      this._setState("closed");
    }

    _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

    _setState(state) {
      if (state === this.state) return;
      this.state = state;
      this._emit("state", state);
    }

    _streamUrl() {
      const last = this.lastEventId ? "?last_event_id=" + encodeURIComponent(this.lastEventId) : "";
      return this.base + "/api/videos/" + encodeURIComponent(this.videoId) + "/stream" + last;
    }

    // A comment once per revision, newest only.
    _comment(view) {
      if (!view || view.id == null) return;
      const rev = view.rev || 0, seen = this._revs.get(view.id);
      if (seen !== undefined && rev <= seen) return;   // a repeat, or older
      this._revs.set(view.id, rev);
      this._emit("comment", view);
    }

    _open(url) {
      if (this._closed) return;
      if (this._es) this._es.close();
      clearTimeout(this._retry); this._retry = null;
      if (this.state !== "live") this._setState(this.state === "idle" ? "connecting" : "reconnecting");
      const src = this._es = new EventSource(url);
      // Ignore events of a stream this one replaced. Only sequenced events carry ids.
      const on = (name, fn, sequenced) => src.addEventListener(name, (ev) => {
        if (src !== this._es) return;
        let data;
        try { data = JSON.parse(ev.data); } catch (_) { return; }
        if (sequenced && ev.lastEventId) this.lastEventId = ev.lastEventId;
        fn(data, ev);
      });
      const comment = (d, ev) => this._comment(fromStream(d, this.videoId, ev.lastEventId));
      src.onopen = () => {
        if (src !== this._es) return;
        this._backoff = 1000;
        this._stopPolling();
        this._setState("live");
      };
      on("comment", comment, true);
      on("comment.updated", comment, true);
      on("comment.deleted", comment, true);
      const pin = (type) => (d, ev) => this._emit(type, fromStream(d, this.videoId, ev.lastEventId));
      on("pinned", pin("pinned"), true);
      on("unpinned", pin("unpinned"), true);
      on("reactions", (d) => this._emit("reactions", d));
      on("viewers", (d) => this._emit("viewers", d));
      on("moved", (d) => {
        // The node is going away: to the node it names, if trusted, else through the
        // comment service (which picks a node the video is placed on).
        this._setState("reconnecting");
        let next = this._streamUrl();
        const u = d.url ? trustedStreamUrl(d.url, this.base, this.trustedOrigins) : null;
        if (u) {
          if (this.lastEventId) u.searchParams.set("last_event_id", this.lastEventId);
          next = u.href;
        }
        this._open(next);
      });
      on("reset", (d) => {
        // What we have cannot be continued: start again from the app's history.
        this.lastEventId = null;
        this._revs.clear();
        this._emit("reset", d);
      });
      src.onerror = () => {
        if (src !== this._es) return;
        // Retry ourselves: the browser's own retry would reuse the first URL, with a
        // stale last_event_id. Meanwhile, poll history.
        src.close(); this._es = null;
        this._setState("reconnecting");
        this._startPolling();
        this._retry = setTimeout(() => this._open(this._streamUrl()), this._backoff);
        this._backoff = Math.min(this._backoff * 2, MAX_BACKOFF_MS);
      };
    }

    // History after the last seq handled, oldest first, until the stream is back.
    // lastEventId is left alone: the stream's replay from it fills in what a page of
    // history does not carry (edits of older comments), and repeats are dropped.
    _startPolling() {
      if (this._poll) return;
      this._pollAfter = this.lastEventId ? Number(this.lastEventId.split("-")[1]) || 0 : 0;
      const live = () => this._es && this._es.readyState === EventSource.OPEN;
      const tick = async () => {
        this._poll = null;
        if (this._closed || live()) return;
        let again = this.pollMs;
        try {
          const url = this.base + "/api/videos/" + encodeURIComponent(this.videoId) +
            "/comments?limit=100&after=" + this._pollAfter;
          const res = await fetch(url);
          if (res.ok) {
            const page = await res.json();
            for (const c of page.items || []) {
              this._comment(c);
              for (const r of c.replies || []) this._comment(r);
            }
            if (page.poll_after != null) this._pollAfter = page.poll_after;
            if (page.next_after != null) again = 0;
          }
        } catch (_) { /* the same pace */ }
        if (!this._closed && !live()) this._poll = setTimeout(tick, again);
      };
      this._poll = setTimeout(tick, 1000);
    }

    _stopPolling() { clearTimeout(this._poll); this._poll = null; }
  }

  global.LiveComments = { VideoStream, fromStream, trustedOrigin, trustedStreamUrl };
})(typeof window !== "undefined" ? window : globalThis);
