/* The shop page: products with live stock, a cart, orders with their saga, the system panel.
 *
 * State comes over HTTP; changes come as events with cursors ("epoch:offset"), over the WebSocket
 * at /ws/ when it is up and by polling /api/events while it is down. The page remembers the cursor
 * of the last event it applied, so a new socket (or a poll) resumes exactly there. Whatever fails,
 * the page degrades: polling alone keeps it correct.
 *
 * No dependencies, no build step: plain ES2020.
 */
"use strict";

(() => {
  // -- settings -----------------------------------------------------------------------------------

  const BACKOFF_BASE = 0.5; // seconds: delay = random(0, min(cap, base * 2^attempt)), full jitter
  const BACKOFF_CAP = 30;
  const STABLE_AFTER = 10_000; // ms a socket stays open before the attempt count resets
  const HELLO_TIMEOUT = 10_000; // ms from "connecting" to "hello" before we give up on a socket
  const DEAD_PEER_FACTOR = 2.5; // silence for this many heartbeats means the peer is gone
  const POLL_EVERY = 2_000; // ms between polls of /api/events while the socket is down
  const SYSTEM_EVERY = 5_000; // ms between looks at /api/system
  const ACK_DELAY = 200; // ms: acknowledge at most this late...
  const ACK_EVERY = 20; // ...or after this many events,
  const ACK_MIN_GAP = 120; // ...and not more often (acks of new events are exempt from the server's frame limit; fewer are cheaper)
  const STALE_REFRESH = 10_000; // ms between product reloads while inventory is not answering
  const ORDERS_PAGE = 10;
  const HAPPY_PATH = ["placed", "reserved", "charged", "confirmed"];
  const WARNING_STEPS = new Set(["released", "refunded", "failed"]);
  const OPEN_STATES = new Set(["pending", "reserved", "charged"]);

  // -- state --------------------------------------------------------------------------------------

  const customerNode = document.getElementById("shop-customer");
  const customer = customerNode ? JSON.parse(customerNode.textContent) : null;

  /** Minimal state for browser tests; kept current. */
  const shopState = (window.shopState = { socket: "reconnecting", cursor: null, connects: 0 });

  const products = new Map(); // sku -> Stock
  const productCards = new Map(); // sku -> {card, parts}
  const stockEventAt = new Map(); // sku -> performance.now() of the last stock event applied
  const orders = new Map(); // order_id -> Order
  const orderRows = new Map(); // order_id -> <li>
  let ordersNextCursor = "";
  let productsStale = { stale: false, since: 0 };
  let productsTimer = null;
  let productsFollowUp = false;
  let unknownSkuTimer = null;

  let ws = null;
  let socketLive = false;
  let attempt = 0;
  let heartbeat = 0; // seconds, from hello
  let reconnectTimer = null;
  let stableTimer = null;
  let watchdogTimer = null;
  let lastImmediateReconnect = 0;
  let unloading = false;

  let pollGeneration = 0;
  let pollTimer = null;
  let pollStatus = "idle"; // idle | ok | failed

  let ackTimer = null;
  let ackCount = 0;
  let lastAckAt = 0;

  let reloading = null; // a promise while products and orders are reloaded over HTTP
  const heldEvents = []; // events that arrived during a reload: applied after it

  let systemCache = null;

  let balanceCents = null; // the signed-in customer's balance, once read
  let balanceTimer = null;
  let ordersFailed = false; // the last load of the orders failed: "no orders yet" would be a guess

  // -- small helpers ------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === null || value === undefined || value === false) continue;
        if (key === "class") el.className = value;
        else if (key === "text") el.textContent = value;
        else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
        else el.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const money = (cents) => (Number(cents || 0) / 100).toFixed(2);
  /** Amounts in a domain's own words ("1000 cents") as people read money ("10.00"). */
  const moneyInText = (text) => String(text).replace(/\b(\d+) cents\b/g, (_, cents) => money(Number(cents)));

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
  function clock(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? "" : timeFormat.format(date);
  }
  function when(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return "";
    const today = new Date();
    return date.toDateString() === today.toDateString() ? timeFormat.format(date) : dateTimeFormat.format(date);
  }

  function hue(text) {
    let hash = 0;
    for (const char of text) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
    return hash % 360;
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    // randomUUID needs a secure context; getRandomValues does not.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  /** A fetch that never throws on HTTP errors: {ok, status, data, headers}; throws on network errors. */
  async function request(path, { method = "GET", body, headers = {}, timeout = 10_000 } = {}) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeout);
    try {
      const response = await fetch(path, {
        method,
        body,
        headers: { Accept: "application/json", ...headers },
        credentials: "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      const text = await response.text();
      let data = null;
      try {
        data = text ? JSON.parse(text) : null;
      } catch {
        data = null;
      }
      return { ok: response.ok, status: response.status, data, headers: response.headers };
    } finally {
      clearTimeout(timer);
    }
  }

  class HttpProblem extends Error {
    constructor(result) {
      const body = result.data && typeof result.data === "object" ? result.data : {};
      super(body.detail || `The server answered HTTP ${result.status}.`);
      this.status = result.status;
      this.title = body.title || `HTTP ${result.status}`;
      this.errors = Array.isArray(body.errors) ? body.errors : [];
      this.retryAfter = retryAfterSeconds(result.headers);
    }
  }

  async function getJSON(path) {
    const result = await request(path);
    if (!result.ok) throw new HttpProblem(result);
    return result.data;
  }

  function retryAfterSeconds(headers) {
    const value = headers && headers.get("Retry-After");
    if (!value) return null;
    if (/^\d+$/.test(value.trim())) return Number(value.trim());
    const date = Date.parse(value);
    return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
  }

  const errorText = (error) =>
    error instanceof HttpProblem ? error.message : "The shop could not be reached (network error).";

  // -- cursors ------------------------------------------------------------------------------------

  function parseCursor(cursor) {
    if (typeof cursor !== "string") return null;
    const at = cursor.lastIndexOf(":");
    const offset = Number(cursor.slice(at + 1));
    return at < 0 || !Number.isFinite(offset) ? null : { epoch: cursor.slice(0, at), offset };
  }

  /** Is `cursor` past the one we hold? A cursor from another epoch always is. */
  function isAhead(cursor) {
    const next = parseCursor(cursor);
    if (!next) return false;
    const current = parseCursor(shopState.cursor);
    return !current || current.epoch !== next.epoch || next.offset > current.offset;
  }

  /** Offsets of events applied, so that a live push overtaken by a later one is still applied once. */
  const appliedOffsets = new Set();

  /** Is this event news: past our cursor, or a late push of one we have not applied? */
  function isNew(cursor) {
    if (isAhead(cursor)) return true;
    const next = parseCursor(cursor);
    const current = parseCursor(shopState.cursor);
    return !!next && !!current && next.epoch === current.epoch && !appliedOffsets.has(next.offset);
  }

  function adoptCursor(cursor) {
    if (isAhead(cursor)) {
      shopState.cursor = cursor;
      renderSystemFacts();
    }
  }

  async function fetchHead() {
    const data = await getJSON("/api/events");
    return data.cursor;
  }

  // -- events -------------------------------------------------------------------------------------

  function receiveEvent(event, viaSocket) {
    if (reloading) {
      heldEvents.push([event, viaSocket]);
      return;
    }
    if (isNew(event.cursor)) {
      try {
        applyEvent(event);
      } catch (error) {
        console.warn("shop: could not apply event", event, error);
      }
      if (appliedOffsets.size > 2000) appliedOffsets.clear(); // applying one twice is harmless
      appliedOffsets.add(parseCursor(event.cursor).offset);
      adoptCursor(event.cursor);
    }
    if (viaSocket) queueAck();
  }

  function applyEvent(event) {
    const data = event.data || {};
    if (event.kind === "inventory.stock_changed") {
      applyStock(data);
    } else if (event.kind === "orders.updated") {
      upsertOrder(data.order && !data.order_id ? data.order : data, true);
      refreshBalanceSoon(); // a charge or a refund may have changed it
    }
  }

  /** Load products and orders over HTTP; events that arrive meanwhile are applied after. */
  function reloadState(cursor) {
    if (reloading) return reloading;
    reloading = (async () => {
      const head = cursor === undefined ? await fetchHead() : cursor;
      await Promise.allSettled([loadProducts(), customer ? loadOrders(true) : null, loadBalance()]);
      if (head) adoptCursor(head);
    })();
    const done = reloading;
    done
      .catch((error) => console.warn("shop: reload failed:", errorText(error)))
      .finally(() => {
        reloading = null;
        for (const [event, viaSocket] of heldEvents.splice(0)) receiveEvent(event, viaSocket);
      });
    return done;
  }

  // -- acknowledgements ---------------------------------------------------------------------------

  function queueAck() {
    ackCount += 1;
    if (ackCount < ACK_EVERY) {
      if (!ackTimer) ackTimer = setTimeout(flushAck, ACK_DELAY);
      return;
    }
    clearTimeout(ackTimer);
    ackTimer = setTimeout(flushAck, Math.max(0, ACK_MIN_GAP - (performance.now() - lastAckAt)));
  }

  function flushAck() {
    clearTimeout(ackTimer);
    ackTimer = null;
    if (!ackCount) return;
    ackCount = 0;
    lastAckAt = performance.now();
    if (socketLive && shopState.cursor) send({ type: "ack", cursor: shopState.cursor });
  }

  // -- the socket ---------------------------------------------------------------------------------

  const socketUrl = () => (location.protocol === "https:" ? "wss" : "ws") + "://" + location.host + "/ws/";

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (ws || unloading) return;
    let socket;
    try {
      socket = new WebSocket(socketUrl());
    } catch (error) {
      console.warn("shop: cannot open a WebSocket:", error);
      socketDown(1006);
      return;
    }
    ws = socket;
    armWatchdog();
    renderConnection();
    socket.onopen = () => {
      if (ws !== socket) return;
      shopState.connects += 1;
      send({ type: "resume", cursor: shopState.cursor || null });
      clearTimeout(stableTimer);
      stableTimer = setTimeout(() => {
        attempt = 0;
        renderConnection();
      }, STABLE_AFTER);
      armWatchdog();
      renderConnection();
    };
    socket.onmessage = (message) => {
      if (ws !== socket) return;
      armWatchdog();
      handleFrame(message.data);
    };
    socket.onclose = (event) => {
      if (ws !== socket) return;
      socketDown(event.code);
    };
    socket.onerror = () => {}; // a close event follows
  }

  function handleFrame(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      console.warn("shop: a socket frame that is not JSON:", text);
      return;
    }
    switch (message.type) {
      case "hello":
        heartbeat = Number(message.heartbeat) || 15;
        socketLive = true;
        stopPolling();
        if (!shopState.cursor && message.cursor) adoptCursor(message.cursor);
        armWatchdog();
        renderConnection();
        break;
      case "event":
        receiveEvent(message, true);
        break;
      case "ping":
        send({ type: "pong" });
        break;
      case "reload":
        reloadState(message.cursor || null);
        break;
      case "error":
        console.warn("shop: the server could not use a frame:", message.message);
        break;
      default:
        break;
    }
  }

  /** Dead-peer detection: no frame for 2.5 heartbeats (or no hello in time) closes the socket. */
  function armWatchdog() {
    clearTimeout(watchdogTimer);
    const limit = socketLive && heartbeat ? heartbeat * DEAD_PEER_FACTOR * 1000 : HELLO_TIMEOUT;
    watchdogTimer = setTimeout(() => {
      const socket = ws;
      if (!socket) return;
      console.warn("shop: the socket went silent; reconnecting");
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(1000, "no heartbeat");
      } catch {
        /* closing a dead socket may throw; it is gone either way */
      }
      socketDown(1006);
    }, limit);
  }

  function socketDown(code) {
    ws = null;
    socketLive = false;
    clearTimeout(watchdogTimer);
    clearTimeout(stableTimer);
    clearTimeout(ackTimer);
    ackTimer = null;
    ackCount = 0;
    if (unloading) return;
    const now = performance.now();
    // 4000 lifetime reached, 4002 too slow: come straight back and resume (once in a while).
    if ((code === 4000 || code === 4002) && now - lastImmediateReconnect > 2_000) {
      lastImmediateReconnect = now;
      attempt = 0;
      renderConnection();
      connect();
      return;
    }
    startPolling();
    scheduleReconnect();
  }

  function scheduleReconnect() {
    clearTimeout(reconnectTimer);
    const delay = Math.random() * Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt);
    attempt += 1;
    reconnectTimer = setTimeout(connect, delay * 1000);
    renderConnection();
  }

  function reconnectNow() {
    if (ws || unloading) return;
    connect();
  }

  // -- polling while the socket is down -------------------------------------------------------------

  function startPolling() {
    if (pollTimer !== null || socketLive) return;
    const generation = ++pollGeneration;
    pollTimer = setTimeout(() => pollLoop(generation), 0);
  }

  function stopPolling() {
    pollGeneration += 1;
    clearTimeout(pollTimer);
    pollTimer = null;
    pollStatus = "idle";
  }

  async function pollLoop(generation) {
    if (generation !== pollGeneration) return;
    let wait = POLL_EVERY;
    try {
      if (await pollOnce()) wait = 0;
      if (generation === pollGeneration) pollStatus = "ok";
    } catch (error) {
      if (generation === pollGeneration) pollStatus = "failed";
      console.warn("shop: polling failed:", errorText(error));
    }
    if (generation !== pollGeneration) return;
    renderConnection();
    pollTimer = setTimeout(() => pollLoop(generation), wait);
  }

  /** One poll; true when there may be more to fetch at once. */
  async function pollOnce() {
    if (!shopState.cursor) {
      await reloadState(); // no cursor yet: take the head, then load state after it
      return false;
    }
    const result = await request(`/api/events?since=${encodeURIComponent(shopState.cursor)}`);
    if (result.status === 410) {
      await reloadState();
      return true;
    }
    if (!result.ok || !result.data) throw new HttpProblem(result);
    const events = Array.isArray(result.data.events) ? result.data.events : [];
    for (const event of events) receiveEvent(event, false);
    if (result.data.cursor && !reloading) adoptCursor(result.data.cursor);
    return events.length >= 500;
  }

  // -- connection badge ---------------------------------------------------------------------------

  function connectionState() {
    if (socketLive) return "live";
    if (navigator.onLine === false) return "offline";
    if (pollStatus === "ok") return "polling";
    if (pollStatus === "failed") return "offline";
    return "reconnecting";
  }

  function renderConnection() {
    const state = connectionState();
    shopState.socket = state;
    const badge = $("socket-state");
    if (badge) {
      const label = {
        live: "Live",
        reconnecting: shopState.connects || attempt ? `Reconnecting (attempt ${Math.max(attempt, 1)})` : "Connecting…",
        polling: attempt ? `Polling · attempt ${attempt}` : "Polling",
        offline: "Offline",
      }[state];
      const title = {
        live: "Live updates over the WebSocket",
        reconnecting: "The live connection is down; reconnecting",
        polling: "The live connection is down; checking for changes every 2 s while reconnecting",
        offline: "Cannot reach the shop; retrying",
      }[state];
      badge.dataset.state = state;
      badge.title = title;
      badge.querySelector(".badge-label").textContent = label;
    }
    renderSystemFacts();
  }

  // -- products -----------------------------------------------------------------------------------

  async function loadProducts() {
    clearTimeout(productsTimer);
    const followUp = productsFollowUp;
    productsFollowUp = false;
    const started = performance.now();
    let data;
    try {
      data = await getJSON("/api/products");
    } catch (error) {
      showProductsError(error);
      productsTimer = setTimeout(() => loadProducts().catch(() => {}), STALE_REFRESH);
      throw error;
    }
    const age = Number(data.age) || 0;
    const snapshotAt = started - age * 1000; // roughly when these figures were read
    const seen = new Set();
    for (const item of data.products || []) {
      seen.add(item.sku);
      const known = products.get(item.sku);
      const eventAt = stockEventAt.get(item.sku);
      // A stock event applied after the snapshot was taken is newer than the snapshot.
      const fresh =
        known && eventAt !== undefined && eventAt > snapshotAt
          ? { ...item, on_hand: known.on_hand, reserved: known.reserved, available: known.available }
          : item;
      products.set(item.sku, fresh);
    }
    for (const sku of [...products.keys()]) if (!seen.has(sku)) products.delete(sku);
    renderProducts();
    setStale(Boolean(data.stale), age);
    if (data.stale) {
      productsTimer = setTimeout(() => loadProducts().catch(() => {}), STALE_REFRESH);
    } else if (age > 0.05 && !followUp) {
      // Served from a short cache: look once more, so a change just before our cursor is not lost.
      productsTimer = setTimeout(() => {
        productsFollowUp = true;
        loadProducts().catch(() => {});
      }, 2_200);
    }
    renderCart();
    return data;
  }

  function showProductsError(error) {
    const grid = $("products");
    const meta = $("products-meta");
    if (meta) {
      // With no products to show, the grid says why: the message once, not twice.
      meta.textContent = grid && !products.size ? "Retrying…" : `Could not load products: ${errorText(error)} Retrying…`;
      meta.classList.add("text-warn");
    }
    if (grid && !products.size) {
      grid.setAttribute("aria-busy", "false");
      grid.replaceChildren(
        h("div", { class: "empty-state" }, h("strong", { text: "Products are not available right now." }), h("p", { class: "muted", text: errorText(error) }))
      );
    }
  }

  function setStale(stale, age) {
    productsStale = { stale, since: performance.now() - age * 1000 };
    const banner = document.querySelector("[data-testid=stale-banner] .stale-text");
    const box = document.querySelector("[data-testid=stale-banner]");
    if (box) box.hidden = !stale;
    if (banner && stale) banner.textContent = staleText();
    for (const { card } of productCards.values()) {
      card.classList.toggle("is-stale", stale);
      card.dataset.stale = String(stale);
    }
  }

  function staleText() {
    const seconds = Math.max(0, Math.round((performance.now() - productsStale.since) / 1000));
    return `Stock figures may be out of date (inventory is not answering); showing values from ${seconds} s ago`;
  }

  function renderProducts() {
    const grid = $("products");
    if (!grid) return;
    grid.setAttribute("aria-busy", "false");
    const skus = [...products.keys()].sort();
    const cards = [];
    for (const sku of skus) {
      let entry = productCards.get(sku);
      if (!entry) {
        entry = buildProductCard(sku);
        productCards.set(sku, entry);
      }
      updateProductCard(sku, false);
      cards.push(entry.card);
    }
    for (const sku of [...productCards.keys()]) if (!products.has(sku)) productCards.delete(sku);
    if (!cards.length) {
      grid.replaceChildren(h("div", { class: "empty-state" }, h("strong", { text: "No products yet." }), h("p", { class: "muted" }, "Run ", h("code", { text: "manage.py seed" }), " to add the demo catalogue.")));
    } else {
      grid.replaceChildren(...cards);
    }
    const meta = $("products-meta");
    if (meta) {
      meta.classList.remove("text-warn");
      meta.textContent = `${cards.length} product${cards.length === 1 ? "" : "s"} · stock updates live`;
    }
  }

  function buildProductCard(sku) {
    const product = products.get(sku);
    const quantity = h("input", {
      type: "number", class: "qty", min: "1", value: "1", inputmode: "numeric",
      "aria-label": `Quantity of ${product.name}`,
    });
    const add = h("button", { type: "button", class: "btn btn-primary", "data-testid": `add-${sku}` }, "Add");
    add.addEventListener("click", () => addToCart(sku, Number(quantity.value) || 1));
    quantity.addEventListener("keydown", (event) => {
      if (event.key === "Enter") add.click();
    });
    const parts = {
      name: h("h3", { class: "product-name" }),
      sku: h("span", { class: "sku" }),
      price: h("span", { class: "price" }),
      stock: h("span", { class: "stock" }),
      inCart: h("span", { class: "in-cart", hidden: true }),
      quantity,
      add,
      monogram: h("span", { class: "monogram", "aria-hidden": "true" }),
    };
    const card = h(
      "article",
      { class: "card product", "data-testid": `product-${sku}`, "data-sku": sku },
      h("div", { class: "product-top" }, parts.monogram, h("div", { class: "product-title" }, parts.name, parts.sku)),
      h("div", { class: "product-mid" }, parts.price, parts.stock),
      h("div", { class: "product-actions" }, parts.quantity, parts.add, parts.inCart)
    );
    card.style.setProperty("--hue", String(hue(sku)));
    return { card, parts };
  }

  function updateProductCard(sku, changed) {
    const entry = productCards.get(sku);
    const product = products.get(sku);
    if (!entry || !product) return;
    const { card, parts } = entry;
    const available = Math.max(0, Number(product.available) || 0);
    const before = card.dataset.available;
    card.dataset.available = String(available);
    card.classList.toggle("is-stale", productsStale.stale);
    card.dataset.stale = String(productsStale.stale);
    card.classList.toggle("sold-out", available === 0);
    parts.name.textContent = product.name;
    parts.sku.textContent = sku;
    parts.monogram.textContent = initials(product.name || sku);
    parts.price.textContent = money(product.price_cents);
    parts.stock.textContent = available === 0 ? "Out of stock" : available <= 3 ? `Only ${available} left` : `${available} available`;
    parts.stock.dataset.level = available === 0 ? "none" : available <= 3 ? "low" : "ok";
    parts.stock.title = `On hand ${product.on_hand ?? "?"} · reserved ${product.reserved ?? "?"} · available ${available}`;
    parts.quantity.max = String(Math.max(1, available));
    parts.quantity.disabled = !customer || available === 0;
    parts.add.disabled = !customer || available === 0;
    parts.add.title = !customer ? "Sign in to add to your cart" : available === 0 ? "Out of stock" : `Add ${product.name} to your cart`;
    const inCart = cartQuantity(sku);
    parts.inCart.hidden = !inCart;
    parts.inCart.textContent = inCart ? `${inCart} in cart` : "";
    if (changed && before !== undefined && before !== String(available)) flash(card);
  }

  function initials(name) {
    const words = String(name).replace(/[^\p{L} ]/gu, " ").split(/\s+/).filter(Boolean);
    return (words.length > 1 ? words[0][0] + words[1][0] : (words[0] || "?").slice(0, 2)).toUpperCase();
  }

  function flash(el) {
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  function applyStock(data) {
    if (!data || !data.sku) return;
    const known = products.get(data.sku);
    // Events can arrive out of order (an outbox retries a failed delivery later): keep the newest.
    if (known && typeof data.version === "number" && data.version <= (known.version ?? -1)) return;
    stockEventAt.set(data.sku, performance.now());
    if (!known) {
      // A product we have not seen: load the catalogue again (once, shortly).
      clearTimeout(unknownSkuTimer);
      unknownSkuTimer = setTimeout(() => loadProducts().catch(() => {}), 300);
      return;
    }
    products.set(data.sku, {
      ...known,
      on_hand: data.on_hand,
      reserved: data.reserved,
      available: data.available,
      version: data.version,
    });
    updateProductCard(data.sku, true);
    renderCart();
  }

  // -- the cart -----------------------------------------------------------------------------------

  const cartStorageKey = customer ? `shop.cart.v1.${customer}` : null;
  const cart = loadCart(); // {lines: [[sku, quantity]...] as a Map, key: idempotency key or null}
  let placing = false;
  let retryTimer = null;
  let retryUntil = 0;

  function loadCart() {
    const empty = { lines: new Map(), key: null };
    if (!cartStorageKey) return empty;
    try {
      const saved = JSON.parse(localStorage.getItem(cartStorageKey) || "null");
      if (!saved || !Array.isArray(saved.lines)) return empty;
      const lines = new Map(saved.lines.filter(([sku, qty]) => typeof sku === "string" && Number.isInteger(qty) && qty > 0));
      return { lines, key: typeof saved.key === "string" ? saved.key : null };
    } catch {
      return empty;
    }
  }

  function saveCart() {
    if (!cartStorageKey) return;
    try {
      localStorage.setItem(cartStorageKey, JSON.stringify({ lines: [...cart.lines], key: cart.key }));
    } catch {
      /* private mode or full: the cart lives in this tab only */
    }
  }

  const cartQuantity = (sku) => cart.lines.get(sku) || 0;

  /** Any change to the cart makes it a new checkout: a new idempotency key next time. */
  function changeCart(sku, quantity) {
    if (quantity > 0) cart.lines.set(sku, Math.min(1000, quantity));
    else cart.lines.delete(sku);
    cart.key = null;
    saveCart();
    updateProductCard(sku, false);
    renderCart();
  }

  function addToCart(sku, quantity) {
    if (!customer) return;
    const product = products.get(sku);
    const available = product ? Number(product.available) || 0 : 0;
    const wanted = Math.max(1, Math.floor(quantity));
    const had = cartQuantity(sku);
    const next = Math.min(had + wanted, Math.max(available, had));
    const name = product ? product.name : sku;
    const inCart = had ? ` (${had} in your cart already)` : "";
    if (next === had) {
      setCartStatus(`Only ${available} of ${name} available${inCart}: none added.`, true);
      return;
    }
    const added = next - had;
    changeCart(sku, next);
    if (added < wanted) setCartStatus(`Added ${added} × ${name}, not ${wanted}: only ${available} available${inCart}.`, true);
    else setCartStatus(`Added ${added} × ${name}`);
    const entry = productCards.get(sku);
    if (entry) entry.parts.quantity.value = "1";
  }

  /** A note on the cart (and its bar on a phone) for a while; a warning stays longer. */
  function setCartStatus(text, warn = false) {
    const note = $("cart-count");
    if (!note) return;
    note.dataset.flash = text;
    note.dataset.warn = String(warn);
    renderCart();
    clearTimeout(setCartStatus.timer);
    setCartStatus.timer = setTimeout(() => {
      delete note.dataset.flash;
      delete note.dataset.warn;
      renderCart();
    }, warn ? 8_000 : 2_500);
  }

  function renderCart() {
    const list = $("cart-lines");
    if (!list) return;
    const rows = [];
    let total = 0;
    let count = 0;
    for (const [sku, quantity] of cart.lines) {
      const product = products.get(sku);
      const price = product ? Number(product.price_cents) || 0 : 0;
      total += price * quantity;
      count += quantity;
      const available = product ? Number(product.available) || 0 : 0;
      const tooMany = product && quantity > available;
      rows.push(
        h(
          "li",
          { class: "cart-line", "data-sku": sku },
          h("div", { class: "cart-line-main" },
            h("span", { class: "cart-line-name", text: product ? product.name : sku }),
            h("span", { class: "muted small", text: product ? `${money(price)} each` : "unknown product" }),
            tooMany ? h("span", { class: "small text-warn", text: `only ${available} available now` }) : null
          ),
          h("div", { class: "stepper-input" },
            h("button", { type: "button", class: "icon-btn", "aria-label": `One fewer ${product ? product.name : sku}`, onclick: () => changeCart(sku, quantity - 1) }, "−"),
            h("span", { class: "cart-qty", text: String(quantity) }),
            h("button", { type: "button", class: "icon-btn", "aria-label": `One more ${product ? product.name : sku}`, disabled: product && quantity >= available, onclick: () => changeCart(sku, quantity + 1) }, "+")
          ),
          h("span", { class: "cart-line-total", text: money(price * quantity) }),
          h("button", { type: "button", class: "icon-btn icon-remove", "aria-label": `Remove ${product ? product.name : sku}`, onclick: () => changeCart(sku, 0) }, "×")
        )
      );
    }
    list.replaceChildren(...rows);
    $("cart-empty").hidden = rows.length > 0;
    $("cart-total").textContent = money(total);
    const note = $("cart-count");
    const items = count ? `${count} item${count === 1 ? "" : "s"}` : "empty";
    note.textContent = note.dataset.flash || items;
    note.classList.toggle("text-accent", Boolean(note.dataset.flash) && note.dataset.warn !== "true");
    note.classList.toggle("text-warn", Boolean(note.dataset.flash) && note.dataset.warn === "true");
    renderCartBar(note, items, total);
    renderOverBalance(rows.length ? total : 0);
    const button = $("place-order");
    const waiting = retryUntil > Date.now();
    button.disabled = placing || !rows.length || waiting;
    button.textContent = placing ? "Placing…" : `Place order${rows.length ? ` · ${money(total)}` : ""}`;
    button.setAttribute("aria-busy", placing ? "true" : "false");
  }

  /** On a phone the cart is below the products: a bar at the bottom says what is in it and goes there. */
  function renderCartBar(note, items, total) {
    const text = $("cart-bar-text");
    if (!text) return;
    text.textContent = note.dataset.flash || `Cart · ${items}`;
    text.classList.toggle("text-warn", note.dataset.warn === "true");
    $("cart-bar-total").textContent = money(total);
  }

  function renderOverBalance(total) {
    const over = $("cart-over-balance");
    if (!over) return;
    over.hidden = balanceCents === null || total <= balanceCents;
    over.textContent = over.hidden ? "" : `That is more than your balance of ${money(balanceCents)}: payments will refuse it.`;
  }

  async function placeOrder() {
    if (placing || !cart.lines.size) return;
    if (retryUntil > Date.now()) return;
    const items = [...cart.lines].map(([sku, quantity]) => ({ sku, quantity }));
    if (!cart.key) {
      cart.key = uuid(); // one per checkout attempt; kept for retries of this same cart
      saveCart();
    }
    const key = cart.key;
    placing = true;
    hideAlert();
    renderCart();
    try {
      const result = await request("/api/orders", {
        method: "POST",
        body: JSON.stringify({ items }),
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), "Idempotency-Key": key },
        timeout: 20_000,
      });
      if (result.status === 202 && result.data && result.data.order_id) {
        upsertOrder(result.data, true);
        if (cart.key === key) {
          cart.lines.clear();
          cart.key = null;
          saveCart();
          for (const sku of productCards.keys()) updateProductCard(sku, false);
        }
        setCartStatus(`Order #${shortId(result.data.order_id)} placed`);
        const row = orderRows.get(result.data.order_id);
        if (row && row.scrollIntoView && !isInView(row)) row.scrollIntoView({ behavior: "smooth", block: "nearest" });
      } else {
        const problem = new HttpProblem(result);
        const retryable = result.status === 503 || result.status === 504;
        showAlert(problem, retryable ? problem.retryAfter ?? (result.status === 504 ? 2 : 5) : null);
      }
    } catch (error) {
      // The request may or may not have reached the shop: a retry with the same key is safe.
      showAlert(
        { title: "No answer", message: "The order could not be sent, or its answer was lost. Retrying is safe: the same cart places the order at most once.", errors: [] },
        2
      );
    } finally {
      placing = false;
      renderCart();
    }
  }

  function isInView(el) {
    const rect = el.getBoundingClientRect();
    return rect.top >= 0 && rect.bottom <= window.innerHeight;
  }

  function hideAlert() {
    const alert = $("alert");
    if (alert) {
      alert.hidden = true;
      alert.replaceChildren();
    }
    clearInterval(retryTimer);
    retryTimer = null;
    retryUntil = 0;
  }

  /** An inline alert from a problem: its detail, the field errors, and a retry for 503/504. */
  function showAlert(problem, retryAfter) {
    const alert = $("alert");
    if (!alert) return;
    hideAlert();
    const retryable = retryAfter !== null && retryAfter !== undefined;
    const errors = (problem.errors || []).map((item) =>
      h("li", {}, item.field ? h("code", { text: String(item.field) }) : null, item.field ? ": " : "", String(item.message ?? ""))
    );
    const retry = retryable ? h("button", { type: "button", class: "btn btn-sm btn-warn", onclick: () => placeOrder() }, "Retry") : null;
    alert.className = `alert ${retryable ? "alert-warn" : "alert-error"}`;
    alert.replaceChildren(
      ...[
        h("strong", { class: "alert-title", text: problem.title || "Something went wrong" }),
        h("p", { text: moneyInText(problem.message) }),
        errors.length ? h("ul", { class: "alert-errors" }, errors) : null,
        retry ? h("div", { class: "alert-actions" }, retry, h("span", { class: "small muted retry-hint" })) : null,
      ].filter(Boolean)
    );
    alert.hidden = false;
    if (retry) {
      retryUntil = Date.now() + Math.max(0, retryAfter) * 1000;
      const hint = alert.querySelector(".retry-hint");
      const tick = () => {
        const left = Math.ceil((retryUntil - Date.now()) / 1000);
        if (left > 0) {
          retry.disabled = true;
          retry.textContent = `Retry in ${left} s`;
          hint.textContent = "the service asked us to wait";
        } else {
          retry.disabled = false;
          retry.textContent = "Retry";
          hint.textContent = "your cart and its order key are kept";
          clearInterval(retryTimer);
          retryTimer = null;
          retryUntil = 0;
          renderCart();
        }
      };
      tick();
      if (retryUntil > Date.now()) retryTimer = setInterval(tick, 250);
    }
    renderCart();
  }

  // -- orders -------------------------------------------------------------------------------------

  // Ids start with a timestamp, so their tail tells orders apart.
  const shortId = (id) => String(id).replace(/-/g, "").slice(-8);

  async function loadOrders(reset) {
    if (!customer) return;
    const more = $("orders-more");
    let path = `/api/customers/${encodeURIComponent(customer)}/orders?limit=${ORDERS_PAGE}`;
    if (!reset && ordersNextCursor) path += `&cursor=${encodeURIComponent(ordersNextCursor)}`;
    if (more) more.disabled = true;
    try {
      const data = await getJSON(path);
      if (reset) {
        orders.clear();
        orderRows.clear();
        $("orders").replaceChildren();
      }
      for (const order of data.orders || []) upsertOrder(order, false);
      ordersNextCursor = data.next_cursor || "";
      ordersFailed = false;
      setOrdersMeta("");
    } catch (error) {
      ordersFailed = true;
      setOrdersMeta(`Could not load your orders: ${errorText(error)}`, true);
      throw error;
    } finally {
      if (more) more.disabled = false;
      renderOrdersChrome();
    }
  }

  function setOrdersMeta(text, warn = false) {
    const meta = $("orders-meta");
    if (!meta) return;
    meta.textContent = text || (orders.size ? `${orders.size} shown · updates live` : "");
    meta.classList.toggle("text-warn", warn);
  }

  function renderOrdersChrome() {
    const empty = $("orders-empty");
    if (empty) empty.hidden = orders.size > 0 || ordersFailed;
    const more = $("orders-more");
    if (more) more.hidden = !ordersNextCursor;
    if (!$("orders-meta")?.classList.contains("text-warn")) setOrdersMeta("");
  }

  function newer(a, b) {
    const at = Date.parse(a.updated_at);
    const bt = Date.parse(b.updated_at);
    if (at !== bt) return at > bt;
    return (a.steps || []).length >= (b.steps || []).length;
  }

  function upsertOrder(order, live) {
    if (!order || !order.order_id || (customer && order.customer_id && order.customer_id !== customer)) return;
    const known = orders.get(order.order_id);
    if (known && !newer(order, known)) return;
    orders.set(order.order_id, order);
    const row = buildOrderRow(order);
    const old = orderRows.get(order.order_id);
    orderRows.set(order.order_id, row);
    const list = $("orders");
    if (!list) return;
    if (old && old.parentNode === list) {
      old.replaceWith(row);
    } else {
      // Newest first, by created_at.
      const created = Date.parse(order.created_at);
      const after = [...list.children].find((el) => {
        const other = orders.get(el.dataset.orderId);
        return other && Date.parse(other.created_at) < created;
      });
      list.insertBefore(row, after || null);
    }
    if (live && (!known || known.state !== order.state)) flash(row);
    renderOrdersChrome();
  }

  function buildOrderRow(order) {
    const lines = (order.lines || []).map((line) => `${line.quantity} × ${line.name || line.sku}`).join(", ");
    const row = h(
      "li",
      { class: `order state-${order.state}`, "data-testid": `order-${order.order_id}`, "data-order-id": order.order_id, "data-state": order.state },
      h("div", { class: "order-head" },
        h("span", { class: "order-id", title: order.order_id }, "#", shortId(order.order_id)),
        h("span", { class: `pill pill-${order.state}`, text: order.state }),
        h("span", { class: "order-when muted small", title: order.created_at, text: when(order.created_at) }),
        h("span", { class: "order-total", text: money(order.total_cents) })
      ),
      lines ? h("p", { class: "order-lines muted small", text: lines }) : null,
      buildStepper(order),
      order.waiting ? h("p", { class: "order-waiting muted small", role: "status", text: order.waiting }) : null,
      order.state === "failed" && order.reason ? h("p", { class: "order-reason", role: "note" }, h("strong", { text: "Why it failed: " }), moneyInText(order.reason)) : null
    );
    return row;
  }

  function buildStepper(order) {
    const steps = (order.steps || []).map((step) => ({ ...step, status: WARNING_STEPS.has(step.name) ? "warn" : "done" }));
    if (OPEN_STATES.has(order.state)) {
      const reached = new Set(steps.map((step) => step.name));
      const lastHappy = Math.max(-1, ...steps.map((step) => HAPPY_PATH.indexOf(step.name)));
      for (const name of HAPPY_PATH.slice(lastHappy + 1)) if (!reached.has(name)) steps.push({ name, status: "todo" });
      const firstTodo = steps.find((step) => step.status === "todo");
      if (firstTodo) firstTodo.status = "next";
    } else if (order.state === "compensating") {
      steps.push({ name: "undoing", status: "next warn-next" });
    }
    return h(
      "ol",
      { class: "saga", "aria-label": "Checkout steps" },
      steps.map((step) =>
        h(
          "li",
          { class: `saga-step is-${step.status.split(" ").join(" is-")}`, title: step.detail ? moneyInText(step.detail) : step.at ? `${step.name} at ${step.at}` : `${step.name}: not yet` },
          h("span", { class: "saga-dot", "aria-hidden": "true" }),
          h("span", { class: "saga-name", text: step.name }),
          h("time", { class: "saga-time", datetime: step.at || null, text: step.at ? clock(step.at) : step.status === "next" ? "waiting" : "" })
        )
      )
    );
  }

  // -- the balance ----------------------------------------------------------------------------------

  /** The customer's balance as payments has it; read again shortly after each update of an order. */
  async function loadBalance() {
    const node = $("balance");
    if (!customer || !node) return;
    try {
      const data = await getJSON(`/api/customers/${encodeURIComponent(customer)}/balance`);
      balanceCents = Number(data.balance_cents);
      node.textContent = money(balanceCents);
      node.title = "Your balance, as payments has it";
      node.classList.remove("text-warn");
    } catch (error) {
      const none = error instanceof HttpProblem && error.status === 404;
      if (none || balanceCents === null) node.textContent = none ? "no account" : "balance unavailable";
      node.title = `${errorText(error)}${balanceCents === null || none ? "" : " Showing the last known balance."}`;
      node.classList.add("text-warn");
      if (none) balanceCents = null;
    }
    node.dataset.cents = balanceCents === null ? "" : String(balanceCents);
    renderCart();
  }

  function refreshBalanceSoon() {
    if (!customer) return;
    clearTimeout(balanceTimer);
    balanceTimer = setTimeout(() => loadBalance(), 300);
  }

  // -- the system panel ---------------------------------------------------------------------------

  async function systemLoop() {
    try {
      systemCache = await getJSON("/api/system");
      renderSystem(null);
    } catch (error) {
      renderSystem(error);
    }
    setTimeout(systemLoop, SYSTEM_EVERY);
  }

  function renderSystem(error) {
    const box = $("system-domains");
    const errorBox = $("system-error");
    const summary = $("system-summary");
    if (!box) return;
    if (error) {
      errorBox.hidden = false;
      errorBox.textContent = `The system status is not available: ${errorText(error)}${systemCache ? " Showing the last known figures." : ""}`;
      summary.textContent = "status unavailable";
      summary.className = "small text-warn";
      box.classList.add("is-stale");
      return;
    }
    errorBox.hidden = true;
    box.classList.remove("is-stale");
    const data = systemCache || { domains: [] };
    const domains = data.domains || [];
    $("system-layer").textContent = data.layer || "?";
    const owners = workerOwners(domains);
    // A worker that serves several domains (all of them, in one-process mode) is one process: its
    // counts are for all its domains, so they are shown once, on a card of its own.
    const shared = [...owners].filter(([, owner]) => owner.domains.length > 1);
    box.replaceChildren(
      ...shared.map(([id, owner]) => processCard(id, owner, domains.length)),
      ...domains.map((domain) => domainCard(domain, owners))
    );
    const problems = domains.flatMap((domain) => [
      ...(Object.keys(domain.workers || {}).length ? [] : [`${domain.domain}: no worker`]),
      ...(domain.read_only ? [`${domain.domain}: read-only`] : []),
    ]);
    const oneProcess = shared.length === 1 && owners.size === 1 && shared[0][1].domains.length === domains.length;
    summary.textContent = problems.length
      ? problems.join(" · ")
      : oneProcess
        ? `one process serves all ${domains.length} domains · healthy`
        : `${domains.length} domains · ${owners.size} worker process${owners.size === 1 ? "" : "es"} · all healthy`;
    summary.className = `small ${problems.length ? "text-warn" : "muted"}`;
  }

  /** worker id -> {worker: what it reports, domains: the names of the domains it serves}. */
  function workerOwners(domains) {
    const owners = new Map();
    for (const domain of domains) {
      for (const [id, worker] of Object.entries(domain.workers || {})) {
        if (!owners.has(id)) owners.set(id, { worker, domains: [] });
        owners.get(id).domains.push(domain.domain);
      }
    }
    return owners;
  }

  const describeWorker = (id, w) =>
    `${id}: pid ${w.pid ?? "?"} on ${w.host ?? "?"}, ${w.in_flight ?? 0}/${w.concurrency ?? "?"} in flight, ${w.handled ?? 0} handled`;

  function processCard(id, { worker, domains }, domainCount) {
    const every = domains.length === domainCount;
    return h(
      "div",
      { class: "domain process", "data-process": id },
      h("div", { class: "domain-head" },
        h("span", { class: "health-dot ok", "aria-hidden": "true" }),
        h("strong", { text: every ? "One process serves every domain" : `One process serves ${domains.join(", ")}` })
      ),
      h("p", { class: "small muted", title: describeWorker(id, worker), text: `pid ${worker.pid ?? "?"} on ${worker.host ?? "?"}; its counts are for ${every ? "all domains" : "these domains"} together.` }),
      h("dl", { class: "domain-stats" },
        stat("in flight", `${Number(worker.in_flight) || 0}/${Number(worker.concurrency) || "?"}`),
        stat("handled", String(Number(worker.handled) || 0))
      )
    );
  }

  function domainCard(domain, owners) {
    const workers = Object.entries(domain.workers || {});
    const own = workers.filter(([id]) => owners.get(id).domains.length === 1).map(([, worker]) => worker);
    const sharedCount = workers.length - own.length;
    const sum = (key) => own.reduce((total, worker) => total + (Number(worker[key]) || 0), 0);
    const capacity = sum("concurrency");
    const counts = own.length
      ? [stat("in flight", capacity ? `${sum("in_flight")}/${capacity}` : String(sum("in_flight"))), stat("handled", String(sum("handled")))]
      : [];
    const label = !workers.length ? "none" : sharedCount ? `${workers.length} · shared` : String(workers.length);
    const titles = workers.map(([id, w]) => `${describeWorker(id, w)}${owners.get(id).domains.length > 1 ? `; serves ${owners.get(id).domains.join(", ")}` : ""}`);
    return h(
      "div",
      { class: `domain${workers.length ? "" : " is-down"}${domain.read_only ? " is-readonly" : ""}`, "data-domain": domain.domain },
      h("div", { class: "domain-head" },
        h("span", { class: `health-dot ${workers.length ? "ok" : "down"}`, "aria-hidden": "true" }),
        h("strong", { text: domain.domain }),
        domain.read_only ? h("span", { class: "tag tag-warn", title: domain.read_only, text: "READ-ONLY" }) : null,
        Object.keys(domain.versions || {}).length > 1
          ? h("span", { class: "tag tag-warn", title: `contract versions live: ${Object.entries(domain.versions).map(([v, n]) => `${v} x${n}`).join(", ")}`, text: `${Object.keys(domain.versions).length} VERSIONS` })
          : null
      ),
      domain.read_only ? h("p", { class: "small text-warn domain-reason", text: domain.read_only }) : null,
      h("dl", { class: "domain-stats" },
        stat("workers", label, titles.join("\n")),
        stat("queued", String(Number(domain.queued) || 0), "calls, commands and events waiting for a worker"),
        Number(domain.retrying) ? stat("retrying", String(Number(domain.retrying)), "commands and events waiting for their next try") : null,
        ...counts
      )
    );
  }

  function stat(label, value, title) {
    return h("div", { title: title || null }, h("dt", { text: label }), h("dd", { text: value }));
  }

  function renderSystemFacts() {
    const socket = $("system-socket");
    if (!socket) return;
    const badge = $("socket-state");
    socket.textContent = badge ? badge.querySelector(".badge-label").textContent : shopState.socket;
    $("system-connects").textContent = String(shopState.connects);
    $("system-cursor").textContent = shopState.cursor || "none";
  }

  // -- start --------------------------------------------------------------------------------------

  function bindPage() {
    const place = $("place-order");
    if (place) place.addEventListener("click", () => placeOrder());
    const more = $("orders-more");
    if (more) more.addEventListener("click", () => loadOrders(false).catch(() => {}));
    window.addEventListener("online", () => {
      clearTimeout(reconnectTimer);
      reconnectNow();
      renderConnection();
    });
    window.addEventListener("offline", renderConnection);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && !ws) {
        clearTimeout(reconnectTimer);
        reconnectNow();
      }
    });
    window.addEventListener("pagehide", () => {
      unloading = true;
      if (ws) ws.close(1000, "page closed");
    });
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) {
        unloading = false; // back from the back/forward cache: catch up from the cursor
        reconnectNow();
      }
    });
    window.addEventListener("storage", (event) => {
      if (event.key !== cartStorageKey) return;
      const fresh = loadCart();
      cart.lines = fresh.lines;
      cart.key = fresh.key;
      for (const sku of productCards.keys()) updateProductCard(sku, false);
      renderCart();
    });
    setInterval(() => {
      if (productsStale.stale) {
        const text = document.querySelector("[data-testid=stale-banner] .stale-text");
        if (text) text.textContent = staleText();
      }
    }, 1_000);
  }

  async function start() {
    bindPage();
    renderConnection();
    renderCart();
    systemLoop();
    // The cursor first: whatever happens after it reaches us, even while products and orders load.
    try {
      adoptCursor(await fetchHead());
    } catch (error) {
      console.warn("shop: no cursor yet:", errorText(error));
    }
    await Promise.allSettled([loadProducts(), customer ? loadOrders(true) : null, loadBalance()]);
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
