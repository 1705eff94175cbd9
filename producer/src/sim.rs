//! Shoppers with funnel behaviour, simulated in event time.
//!
//! A discrete-event simulation: every active session has the time of its next action, and
//! [`Simulator::next`] always takes the earliest, so events come out in event-time order. A
//! session starts with a view, then views popular products (Zipf), puts some in its cart, removes
//! some, and either checks out (one purchase event per cart line, as in REES46), abandons, or goes
//! idle for longer than the inactivity gap — which ends the session; the same user comes back
//! later under a new `user_session`. Pauses inside a session are exponential with a mean of
//! the think time and always shorter than the inactivity gap, so a sessionizer with that gap sees
//! exactly the sessions the simulator made.
//!
//! The number of concurrent sessions follows the wanted event rate (times the hour-of-day curve
//! when seasonality is on): `sessions ≈ rate × think time`. A trend makes one product or category
//! draw a share of all views, with a higher cart rate, during a window of event time. Price
//! changes happen at a fixed event-time interval.
//!
//! Deterministic: the same catalog, configuration and seed give the same sequence. No I/O, no
//! clock: event times are computed, and the caller decides what to stamp (see [`Step`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use cartstream_events::types::{Product, RawEvent, SourceMeta};
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};

use crate::catalog::{convert_price, local_currency, Catalog};
use crate::clock::seasonality;
use crate::replay::guest_user_id;
use crate::retail::{quantity, StoreHours};
use crate::zipf::Zipf;

/// Funnel probabilities per step of a session.
#[derive(Debug, Clone)]
pub struct Funnel {
    /// The session ends (abandoning any cart) with this probability per step.
    pub end: f64,
    /// The shopper goes idle for longer than the inactivity gap (ending the session) and comes
    /// back later with a new session.
    pub idle: f64,
    /// With a non-empty cart: check out.
    pub checkout: f64,
    /// With a non-empty cart: remove one item.
    pub remove: f64,
    /// After a view: put the viewed product in the cart.
    pub cart: f64,
}

impl Default for Funnel {
    fn default() -> Self {
        Funnel {
            end: 0.05,
            idle: 0.02,
            checkout: 0.12,
            remove: 0.05,
            cart: 0.18,
        }
    }
}

/// The retail profile (see [`crate::retail`]): store hours and demand curves, guests, repeated
/// order lines.
#[derive(Debug, Clone)]
pub struct RetailConfig {
    /// When the shop is open and its demand; no session acts while it is closed.
    pub hours: StoreHours,
    /// Share of sessions that are guest checkouts: the session's anonymous user (the id `replay
    /// --guest-users anonymous` gives a row without a user), not a catalog user.
    pub guest_share: f64,
    /// Per cart action with a non-empty cart: add again a product already in it, at another
    /// quantity, as its own order line.
    pub repeat_line: f64,
}

impl RetailConfig {
    /// The UCI export's shop: 07:00–20:00 UTC, closed Saturdays and over Christmas, a quarter of
    /// guest sessions.
    pub fn online_retail() -> Self {
        RetailConfig {
            hours: StoreHours::online_retail(),
            guest_share: 0.25,
            repeat_line: 0.03,
        }
    }

    /// Shoppers who fill bigger baskets than the default store's: orders of several lines.
    pub fn funnel() -> Funnel {
        Funnel {
            end: 0.03,
            idle: 0.01,
            checkout: 0.07,
            remove: 0.02,
            cart: 0.35,
        }
    }
}

/// What trends.
#[derive(Debug, Clone, PartialEq)]
pub enum TrendTarget {
    Product(i64),
    Category(String),
}

/// A burst of interest in one product or category during `[from_ms, to_ms)` of event time.
#[derive(Debug, Clone)]
pub struct Trend {
    pub target: TrendTarget,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Share of all views that go to the target during the trend.
    pub share: f64,
    /// Factor on the cart probability after viewing the target.
    pub cart_boost: f64,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Written to `source.producer_id`.
    pub producer_id: String,
    /// Written to `source.system`.
    pub system: String,
    /// Event time of the start.
    pub start_ms: i64,
    /// Mean events per second of event time (over a day, when seasonality is on).
    pub events_per_sec: f64,
    /// Modulate the rate by the hour-of-day curve of [`seasonality`].
    pub seasonality: bool,
    /// Mean concurrent sessions, used to derive the think time when none is given.
    pub sessions: usize,
    /// Mean pause between two events of a session; default `sessions / events_per_sec`, within
    /// 10 ms..60 s.
    pub think_ms: Option<f64>,
    /// Inactivity that ends a session.
    pub session_gap_ms: i64,
    /// Zipf exponent of product popularity.
    pub popularity_skew: f64,
    pub funnel: Funnel,
    /// Currencies shoppers pay in: a user pays in the local currency of their country when it is
    /// in this list, else in the first. Never empty.
    pub currencies: Vec<String>,
    pub trend: Option<Trend>,
    /// Change the price of one product every so often (event time).
    pub price_change_every_ms: Option<i64>,
    /// The retail profile; `None` is the default store (open around the clock).
    pub retail: Option<RetailConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            producer_id: "producer-0".into(),
            system: "simulator".into(),
            start_ms: 0,
            events_per_sec: 1000.0,
            seasonality: false,
            sessions: 1000,
            think_ms: None,
            session_gap_ms: 30 * 60_000,
            popularity_skew: 1.1,
            funnel: Funnel::default(),
            currencies: vec!["USD".into()],
            trend: None,
            price_change_every_ms: None,
            retail: None,
        }
    }
}

/// What [`Simulator::next`] produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The event passed in was filled; it happened at `time_ms`. Its `event_time` and
    /// `source.sent_at` are left for the caller to stamp (the simulated time, or the wall clock
    /// in live mode).
    Event { time_ms: i64 },
    /// A product's price changed at `time_ms`; later events carry the new price.
    PriceChange { time_ms: i64, product: Box<Product> },
}

#[derive(Debug)]
struct Session {
    id: String,
    user: usize,
    /// A guest session's anonymous user id (derived from the session id), instead of `user`'s.
    guest: Option<i64>,
    /// Away between two sessions (idle longer than the gap).
    away: bool,
    events: u32,
    last_viewed: Option<usize>,
    cart: Vec<(usize, i32)>,
    /// Purchases of a checkout still to emit.
    checkout: Vec<(usize, i32)>,
}

/// Generates events; deterministic for a catalog, a configuration and a seed.
pub struct Simulator {
    rng: StdRng,
    id_rng: SmallRng,
    catalog: Catalog,
    /// Indices of the products that can be bought (price > 0), most popular first.
    shop: Vec<usize>,
    popularity: Zipf,
    /// Shop positions of the trend target.
    trend_pool: Vec<usize>,
    trend_zipf: Option<Zipf>,
    slots: Vec<Option<Session>>,
    free: Vec<usize>,
    /// (next action time, sequence number, slot): the sequence makes ties deterministic.
    queue: BinaryHeap<Reverse<(i64, u64, usize)>>,
    seq: u64,
    active: usize,
    now: i64,
    think_ms: f64,
    next_price_change: Option<i64>,
    /// Per user: index into `config.currencies`.
    user_currency: Vec<usize>,
    config: SimConfig,
}

fn uuid_into(rng: &mut impl Rng, out: &mut String) {
    let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.clear();
    out.push_str(id.hyphenated().encode_lower(&mut buf));
}

fn set(opt: &mut Option<String>, value: &str) {
    match opt {
        Some(s) => {
            s.clear();
            s.push_str(value);
        }
        None => *opt = Some(value.to_string()),
    }
}

fn set_str(s: &mut String, value: &str) {
    s.clear();
    s.push_str(value);
}

/// An event with empty fields, to be filled by [`Simulator::next`] (reusing its buffers).
pub fn blank_event() -> RawEvent {
    RawEvent {
        event_id: String::with_capacity(36),
        event_time: String::with_capacity(24),
        event_type: String::with_capacity(16),
        product_id: 0,
        category_id: 0,
        category_code: None,
        brand: None,
        price: 0.0,
        currency: String::with_capacity(3),
        quantity: 1,
        user_id: 0,
        user_session: None,
        channel: None,
        source: SourceMeta {
            system: String::new(),
            producer_id: String::new(),
            file: None,
            line: None,
            sent_at: 0,
        },
    }
}

/// Errors of a configuration that cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    #[error("the catalog has no product with a price above 0 to sell")]
    NothingToSell,
    #[error("the catalog has no users")]
    NoUsers,
    #[error("trend target {0} is not a product of the catalog that can be sold")]
    UnknownTrendProduct(i64),
    #[error("trend category {0:?} has no product that can be sold")]
    UnknownTrendCategory(String),
    #[error("the event rate must be positive")]
    NoRate,
}

impl Simulator {
    pub fn new(catalog: Catalog, config: SimConfig) -> Result<Self, SimError> {
        let shop: Vec<usize> = (0..catalog.products.len())
            .filter(|i| catalog.products[*i].price > 0.0)
            .collect();
        if shop.is_empty() {
            return Err(SimError::NothingToSell);
        }
        if catalog.users.is_empty() {
            return Err(SimError::NoUsers);
        }
        if !(config.events_per_sec.is_finite() && config.events_per_sec > 0.0) {
            return Err(SimError::NoRate);
        }
        let trend_pool: Vec<usize> = match config.trend.as_ref().map(|t| &t.target) {
            None => Vec::new(),
            Some(TrendTarget::Product(id)) => {
                let pos = shop
                    .iter()
                    .position(|i| catalog.products[*i].product_id == *id)
                    .ok_or(SimError::UnknownTrendProduct(*id))?;
                vec![pos]
            }
            Some(TrendTarget::Category(code)) => {
                let pool: Vec<usize> = (0..shop.len())
                    .filter(|p| catalog.products[shop[*p]].category_code == *code)
                    .collect();
                if pool.is_empty() {
                    return Err(SimError::UnknownTrendCategory(code.clone()));
                }
                pool
            }
        };
        let currencies = if config.currencies.is_empty() {
            vec!["USD".to_string()]
        } else {
            config.currencies.clone()
        };
        let user_currency = catalog
            .users
            .iter()
            .map(|u| {
                let local = local_currency(&u.country);
                currencies.iter().position(|c| c == local).unwrap_or(0)
            })
            .collect();
        let think_ms = config.think_ms.unwrap_or_else(|| {
            (config.sessions.max(1) as f64 / config.events_per_sec * 1000.0).clamp(10.0, 60_000.0)
        });
        let popularity = Zipf::new(shop.len(), config.popularity_skew);
        let trend_zipf = (trend_pool.len() > 1).then(|| Zipf::new(trend_pool.len(), 1.0));
        let mut sim = Simulator {
            rng: StdRng::seed_from_u64(config.seed),
            id_rng: SmallRng::seed_from_u64(config.seed ^ 0x1d5e_ed00),
            catalog,
            shop,
            popularity,
            trend_pool,
            trend_zipf,
            slots: Vec::new(),
            free: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            active: 0,
            now: config.start_ms,
            think_ms,
            next_price_change: config
                .price_change_every_ms
                .filter(|e| *e > 0)
                .map(|e| config.start_ms + e),
            user_currency,
            config: SimConfig {
                currencies,
                ..config
            },
        };
        sim.fill_sessions(true);
        Ok(sim)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Mean pause between two events of a session, in ms.
    pub fn think_ms(&self) -> f64 {
        self.think_ms
    }

    /// Sessions active now (not counting users away between sessions).
    pub fn active_sessions(&self) -> usize {
        self.active
    }

    /// Event time of the last step.
    pub fn now_ms(&self) -> i64 {
        self.now
    }

    /// Product ids of the trend target (empty without a trend).
    pub fn trend_product_ids(&self) -> Vec<i64> {
        self.trend_pool
            .iter()
            .map(|p| self.catalog.products[self.shop[*p]].product_id)
            .collect()
    }

    fn target_sessions(&self, t: i64) -> usize {
        let season = match &self.config.retail {
            Some(r) => {
                let d = r.hours.demand(t);
                if d <= 0.0 {
                    // Closed: nobody shops.
                    return 0;
                }
                d
            }
            None if self.config.seasonality => seasonality(t),
            None => 1.0,
        };
        let n = self.config.events_per_sec * season * self.think_ms / 1000.0;
        (n.round() as usize).max(1)
    }

    /// A guest id for a new session `id`, drawn with the retail profile's guest share.
    fn draw_guest(&mut self, id: &str) -> Option<i64> {
        let share = self.config.retail.as_ref()?.guest_share;
        (self.rng.random::<f64>() < share).then(|| guest_user_id(Some(id)))
    }

    fn exp(&mut self, mean: f64) -> f64 {
        let u: f64 = self.rng.random();
        -(1.0 - u).ln() * mean
    }

    /// Pause before a session's next event: exponential, always shorter than the gap.
    fn pause(&mut self) -> i64 {
        let cap = (self.config.session_gap_ms as f64 * 0.9).max(1.0);
        (self.exp(self.think_ms).min(cap) as i64).max(1)
    }

    /// Gap between the purchase events of one order: up to 1.5 s, a think time on average
    /// when that is shorter (so orders do not change the event rate).
    fn order_line_gap(&mut self) -> i64 {
        if self.config.retail.is_some() {
            // An order export's lines share the invoice's time.
            return 0;
        }
        let max = (2.0 * self.think_ms) as i64;
        let max = max.clamp(2, 1500);
        self.rng.random_range(1..=max)
    }

    fn schedule(&mut self, at: i64, slot: usize) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    /// Starts sessions until the target is met.
    fn fill_sessions(&mut self, initial: bool) {
        let target = self.target_sessions(self.now);
        while self.active < target {
            let user = self.rng.random_range(0..self.catalog.users.len());
            let mut id = String::with_capacity(36);
            uuid_into(&mut self.rng, &mut id);
            let guest = self.draw_guest(&id);
            let session = Session {
                id,
                user,
                guest,
                away: false,
                events: 0,
                last_viewed: None,
                cart: Vec::new(),
                checkout: Vec::new(),
            };
            let slot = match self.free.pop() {
                Some(s) => {
                    self.slots[s] = Some(session);
                    s
                }
                None => {
                    self.slots.push(Some(session));
                    self.slots.len() - 1
                }
            };
            // At the start sessions are spread over one think time, as if the shop had been
            // open already; later a new shopper arrives as another leaves, acting a think time
            // later, so the event rate stays on target.
            let delay = if initial {
                self.rng.random_range(0.0..self.think_ms)
            } else {
                self.exp(self.think_ms)
            };
            self.active += 1;
            let at = self.now + delay as i64;
            self.schedule(at, slot);
        }
    }

    fn end_session(&mut self, slot: usize) {
        self.slots[slot] = None;
        self.free.push(slot);
        self.active -= 1;
    }

    fn in_trend(&self, t: i64) -> bool {
        self.config
            .trend
            .as_ref()
            .is_some_and(|tr| t >= tr.from_ms && t < tr.to_ms)
    }

    /// The next step. `ev` is overwritten (its string buffers are reused).
    pub fn next(&mut self, ev: &mut RawEvent) -> Step {
        loop {
            self.fill_sessions(false);
            let top = self.queue.peek().map(|Reverse((at, _, _))| *at);
            // Nobody is scheduled only while a retail shop is closed (the default store keeps
            // at least one session): the next thing to happen is its reopening.
            let horizon = match (top, &self.config.retail) {
                (Some(at), _) => at,
                (None, Some(r)) => r.hours.next_open(self.now),
                (None, None) => unreachable!("fill_sessions keeps at least one session scheduled"),
            };
            if let Some(due) = self.next_price_change {
                if due <= horizon {
                    self.now = self.now.max(due);
                    let every = self.config.price_change_every_ms.unwrap_or(1);
                    self.next_price_change = Some(due + every);
                    return self.price_change(due);
                }
            }
            let Some(Reverse((at, _, slot))) = self.queue.pop() else {
                // Open again: shoppers arrive as at the start.
                self.now = self.now.max(horizon);
                self.fill_sessions(true);
                continue;
            };
            self.now = self.now.max(at);
            if let Some(step) = self.act(slot, ev) {
                return step;
            }
        }
    }

    fn price_change(&mut self, t: i64) -> Step {
        let pos = self.popularity.sample(&mut self.rng);
        let factor = self.rng.random_range(0.8..1.2);
        let p = &mut self.catalog.products[self.shop[pos]];
        p.price = ((p.price * factor * 100.0).round() / 100.0).max(0.01);
        p.updated_at = t;
        Step::PriceChange {
            time_ms: t,
            product: Box::new(p.clone()),
        }
    }

    /// One action of the session in `slot`; `None` when it ended or left without an event.
    fn act(&mut self, slot: usize, ev: &mut RawEvent) -> Option<Step> {
        let t = self.now;
        let mut s = self.slots[slot]
            .take()
            .expect("scheduled slots hold a session");
        if self
            .config
            .retail
            .as_ref()
            .is_some_and(|r| !r.hours.is_open(t))
        {
            // The shop closed: the shopper leaves (an unfinished cart is abandoned; an order's
            // lines share one time, so none is cut).
            self.free.push(slot);
            if !s.away {
                self.active -= 1;
            }
            return None;
        }
        if s.away {
            // Back after an inactivity gap: a new session of the same user.
            s.away = false;
            s.events = 0;
            s.last_viewed = None;
            uuid_into(&mut self.rng, &mut s.id);
            s.guest = self.draw_guest(&s.id);
            self.active += 1;
        }
        if let Some((product, qty)) = s.checkout.pop() {
            self.fill(ev, &s, "purchase", product, qty);
            if s.checkout.is_empty() {
                self.slots[slot] = Some(s);
                self.end_session(slot);
            } else {
                // The other lines of the order follow quickly.
                let at = t + self.order_line_gap();
                self.slots[slot] = Some(s);
                self.schedule(at, slot);
            }
            return Some(Step::Event { time_ms: t });
        }
        let f = self.config.funnel.clone();
        let r: f64 = self.rng.random();
        let kind;
        let (product, qty);
        if s.events > 0 && !s.cart.is_empty() && r < f.checkout {
            // Check out: one purchase event per cart line, then the session ends.
            s.checkout = std::mem::take(&mut s.cart);
            s.checkout.reverse();
            let (p, q) = s.checkout.pop().expect("the cart was not empty");
            (kind, product, qty) = ("purchase", p, q);
        } else if s.events > 0 && !s.cart.is_empty() && r < f.checkout + f.remove {
            let k = self.rng.random_range(0..s.cart.len());
            let (p, q) = s.cart.swap_remove(k);
            (kind, product, qty) = ("remove_from_cart", p, q);
        } else {
            let cart_p = match s.last_viewed {
                Some(p) if self.in_trend(t) && self.trend_pool.contains(&p) => {
                    (f.cart * self.config.trend.as_ref().map_or(1.0, |x| x.cart_boost)).min(0.9)
                }
                _ => f.cart,
            };
            let repeat = self.config.retail.as_ref().map_or(0.0, |r| r.repeat_line);
            match s.last_viewed {
                Some(p) if self.rng.random::<f64>() < cart_p => {
                    let q = if self.config.retail.is_some() {
                        quantity(&mut self.rng, None)
                    } else if self.rng.random::<f64>() < 0.1 {
                        self.rng.random_range(2..=4)
                    } else {
                        1
                    };
                    s.cart.push((p, q));
                    s.last_viewed = None;
                    (kind, product, qty) = ("cart", p, q);
                }
                _ if repeat > 0.0 && !s.cart.is_empty() && self.rng.random::<f64>() < repeat => {
                    // The same product again, at another quantity: its own order line.
                    let k = self.rng.random_range(0..s.cart.len());
                    let (p, q0) = s.cart[k];
                    let q = quantity(&mut self.rng, Some(q0));
                    s.cart.push((p, q));
                    (kind, product, qty) = ("cart", p, q);
                }
                _ => {
                    let p = self.pick_view(t);
                    s.last_viewed = Some(p);
                    (kind, product, qty) = ("view", p, 1);
                }
            }
        }
        s.events += 1;
        self.fill(ev, &s, kind, product, qty);
        if kind == "purchase" {
            let more = !s.checkout.is_empty();
            self.slots[slot] = Some(s);
            if more {
                let at = t + self.order_line_gap();
                self.schedule(at, slot);
            } else {
                self.end_session(slot);
            }
            return Some(Step::Event { time_ms: t });
        }
        // After each event the shopper may leave: idle past the gap (the session is over, the
        // user returns much later under a new one) or for good (abandoning any cart). Deciding
        // here, not at the next turn, keeps one event per think time per active session: a
        // replacement starts a think time later, as the next event would have.
        let leave: f64 = self.rng.random();
        if leave < f.idle {
            s.away = true;
            s.cart.clear();
            let gap = self.config.session_gap_ms as f64;
            let back = t + (gap + self.exp(gap)) as i64 + 1000;
            self.slots[slot] = Some(s);
            self.active -= 1;
            self.schedule(back, slot);
        } else if leave < f.idle + f.end {
            self.slots[slot] = Some(s);
            self.end_session(slot);
        } else {
            let at = t + self.pause();
            self.slots[slot] = Some(s);
            self.schedule(at, slot);
        }
        Some(Step::Event { time_ms: t })
    }

    /// A shop position to view: the trend target with the trend's share, else by popularity.
    fn pick_view(&mut self, t: i64) -> usize {
        if self.in_trend(t) {
            let share = self.config.trend.as_ref().map_or(0.0, |x| x.share);
            if self.rng.random::<f64>() < share {
                let k = match &self.trend_zipf {
                    Some(z) => z.sample(&mut self.rng),
                    None => 0,
                };
                return self.trend_pool[k];
            }
        }
        self.popularity.sample(&mut self.rng)
    }

    fn fill(&mut self, ev: &mut RawEvent, s: &Session, kind: &str, pos: usize, qty: i32) {
        let p = &self.catalog.products[self.shop[pos]];
        let user = &self.catalog.users[s.user];
        let currency = &self.config.currencies[self.user_currency[s.user]];
        // Event ids come from their own generator, so they do not consume the shopping
        // decisions' random numbers.
        uuid_into(&mut self.id_rng, &mut ev.event_id);
        set_str(&mut ev.event_type, kind);
        ev.product_id = p.product_id;
        ev.category_id = p.category_id;
        set(&mut ev.category_code, &p.category_code);
        set(&mut ev.brand, &p.brand);
        ev.price = convert_price(p.price, &p.currency, currency);
        set_str(&mut ev.currency, currency);
        ev.quantity = qty;
        ev.user_id = s.guest.unwrap_or(user.user_id);
        set(&mut ev.user_session, &s.id);
        set(
            &mut ev.channel,
            match user.device.as_str() {
                "desktop" => "web",
                "console" => "console",
                _ => "app",
            },
        );
        set_str(&mut ev.source.system, &self.config.system);
        set_str(&mut ev.source.producer_id, &self.config.producer_id);
        ev.source.file = None;
        ev.source.line = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn sim_with(seed: u64, f: impl FnOnce(&mut SimConfig)) -> Simulator {
        let mut c = SimConfig {
            seed,
            sessions: 50,
            events_per_sec: 100.0,
            ..SimConfig::default()
        };
        f(&mut c);
        Simulator::new(Catalog::synthetic(seed, 500, 300, 0), c).unwrap()
    }

    fn events(s: &mut Simulator, n: usize) -> Vec<(i64, RawEvent)> {
        let mut out = Vec::new();
        let mut ev = blank_event();
        while out.len() < n {
            if let Step::Event { time_ms } = s.next(&mut ev) {
                out.push((time_ms, ev.clone()));
            }
        }
        out
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (mut a, mut b) = (sim_with(3, |_| {}), sim_with(3, |_| {}));
        assert_eq!(events(&mut a, 2000), events(&mut b, 2000));
        let mut c = sim_with(4, |_| {});
        assert_ne!(events(&mut a, 100), events(&mut c, 100));
    }

    #[test]
    fn funnel_shape_is_realistic_and_consistent() {
        let mut s = sim_with(5, |_| {});
        let evs = events(&mut s, 60_000);
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut ids = HashSet::new();
        let mut carted: HashMap<(String, i64), i32> = HashMap::new();
        let mut last_time = i64::MIN;
        let mut first_of_session = HashSet::new();
        for (t, e) in &evs {
            assert!(*t >= last_time, "events come in event-time order");
            last_time = *t;
            assert!(ids.insert(e.event_id.clone()), "event ids are unique");
            let session = e.user_session.clone().unwrap();
            if first_of_session.insert(session.clone()) {
                assert_eq!(e.event_type, "view", "a session starts with a view");
            }
            let key = (session, e.product_id);
            match e.event_type.as_str() {
                "cart" => *carted.entry(key).or_default() += e.quantity,
                // Nothing is bought or removed that was not in that session's cart.
                "purchase" | "remove_from_cart" => {
                    let n = carted.get_mut(&key).expect("carted in this session");
                    assert!(*n >= e.quantity);
                    *n -= e.quantity;
                }
                _ => {}
            }
            assert!(e.price > 0.0 && e.quantity >= 1);
            *counts.entry(e.event_type.clone()).or_default() += 1;
        }
        let (v, c, p) = (counts["view"], counts["cart"], counts["purchase"]);
        assert!(v > c && c > p && p > 0, "{counts:?}");
        assert!(counts["remove_from_cart"] > 0);
        let conversion = p as f64 / v as f64;
        assert!((0.01..0.3).contains(&conversion), "conversion {conversion}");
    }

    #[test]
    fn rate_matches_and_session_gaps_stay_below_the_inactivity_gap() {
        let mut s = sim_with(9, |c| {
            c.events_per_sec = 50.0;
            c.sessions = 200;
            c.session_gap_ms = 120_000;
        });
        assert!((s.think_ms() - 4000.0).abs() < 1.0);
        let evs = events(&mut s, 30_000);
        let span_s = (evs.last().unwrap().0 - evs[0].0) as f64 / 1000.0;
        let rate = evs.len() as f64 / span_s;
        assert!((45.0..55.0).contains(&rate), "rate {rate}");
        let mut last: HashMap<&str, i64> = HashMap::new();
        for (t, e) in &evs {
            let sess = e.user_session.as_deref().unwrap();
            if let Some(prev) = last.insert(sess, *t) {
                assert!(t - prev < 120_000, "gap {} in one session", t - prev);
            }
        }
        // Users come back under new sessions after going idle.
        let mut sessions_per_user: HashMap<i64, HashSet<&str>> = HashMap::new();
        for (_, e) in &evs {
            sessions_per_user
                .entry(e.user_id)
                .or_default()
                .insert(e.user_session.as_deref().unwrap());
        }
        assert!(sessions_per_user.values().any(|s| s.len() > 1));
    }

    #[test]
    fn high_rates_are_met_too() {
        for (rate, sessions) in [(20_000.0, 1000), (2500.0, 1000), (5.0, 1000)] {
            let mut s = sim_with(1, |c| {
                c.events_per_sec = rate;
                c.sessions = sessions;
            });
            let evs = events(&mut s, 100_000);
            let span_s = (evs.last().unwrap().0 - evs[0].0) as f64 / 1000.0;
            let got = evs.len() as f64 / span_s;
            eprintln!("asked {rate}/s, got {got:.1}/s");
            assert!(
                (got / rate - 1.0).abs() < 0.05,
                "asked {rate}/s, got {got:.1}/s"
            );
        }
    }

    #[test]
    fn seasonality_shapes_the_hourly_volume() {
        let mut s = sim_with(2, |c| {
            c.events_per_sec = 2.0;
            c.sessions = 40;
            c.seasonality = true;
        });
        let evs = events(&mut s, 2 * 86_400 * 2);
        let mut per_hour = [0usize; 24];
        for (t, _) in &evs {
            per_hour[(t / 3_600_000 % 24) as usize] += 1;
        }
        assert!(
            per_hour[20] > 4 * per_hour[4],
            "evening peak vs night: {per_hour:?}"
        );
    }

    #[test]
    fn a_trend_multiplies_purchases_of_its_target() {
        let catalog = Catalog::synthetic(1, 500, 300, 0);
        let target = catalog.products[200].product_id;
        let mut s = Simulator::new(
            catalog,
            SimConfig {
                seed: 1,
                events_per_sec: 100.0,
                sessions: 100,
                trend: Some(Trend {
                    target: TrendTarget::Product(target),
                    from_ms: 300_000,
                    to_ms: 600_000,
                    share: 0.3,
                    cart_boost: 2.0,
                }),
                ..SimConfig::default()
            },
        )
        .unwrap();
        assert_eq!(s.trend_product_ids(), vec![target]);
        let evs = events(&mut s, 100 * 900);
        let count = |from: i64, to: i64| {
            evs.iter()
                .filter(|(t, e)| {
                    *t >= from && *t < to && e.product_id == target && e.event_type == "purchase"
                })
                .count()
        };
        let (before, during) = (count(0, 300_000), count(300_000, 600_000));
        assert!(
            during > 10 * before.max(1),
            "before {before}, during {during}"
        );
    }

    #[test]
    fn price_changes_come_at_their_interval_and_later_events_use_them() {
        let mut s = sim_with(4, |c| c.price_change_every_ms = Some(10_000));
        let mut ev = blank_event();
        let mut changes = Vec::new();
        let mut changed: HashMap<i64, f64> = HashMap::new();
        while changes.len() < 20 {
            match s.next(&mut ev) {
                Step::PriceChange { time_ms, product } => {
                    changed.insert(product.product_id, product.price);
                    changes.push(time_ms);
                }
                Step::Event { .. } => {
                    if let Some(p) = changed.get(&ev.product_id) {
                        assert_eq!(ev.price, *p);
                    }
                }
            }
        }
        assert_eq!(changes[0], 10_000);
        assert!(changes.windows(2).all(|w| w[1] - w[0] == 10_000));
    }

    #[test]
    fn users_pay_in_their_local_currency_when_allowed() {
        let mut s = sim_with(6, |c| c.currencies = vec!["USD".into(), "EUR".into()]);
        let evs = events(&mut s, 5000);
        let cur: HashSet<&str> = evs.iter().map(|(_, e)| e.currency.as_str()).collect();
        assert_eq!(cur, HashSet::from(["USD", "EUR"]));
    }

    fn retail_sim(seed: u64, start: &str, rate: f64) -> Simulator {
        let c = SimConfig {
            seed,
            start_ms: crate::clock::parse_instant(start, 0).unwrap(),
            events_per_sec: rate,
            sessions: 100,
            funnel: RetailConfig::funnel(),
            currencies: vec!["GBP".into()],
            price_change_every_ms: Some(600_000),
            retail: Some(RetailConfig::online_retail()),
            ..SimConfig::default()
        };
        Simulator::new(Catalog::retail(seed, 400, 300, 0), c).unwrap()
    }

    /// Events until event time `to` (price changes skipped).
    fn events_until(s: &mut Simulator, to: &str) -> Vec<(i64, RawEvent)> {
        let to = crate::clock::parse_instant(to, 0).unwrap();
        let mut out = Vec::new();
        let mut ev = blank_event();
        loop {
            if let Step::Event { time_ms } = s.next(&mut ev) {
                if time_ms >= to {
                    return out;
                }
                out.push((time_ms, ev.clone()));
            }
        }
    }

    #[test]
    fn a_retail_week_sells_only_in_store_hours_with_guests_and_repeated_lines() {
        // Thursday 2026-11-05 00:00 (closed until 07:00) to Thursday 11-12: Saturday closed.
        let mut s = retail_sim(11, "2026-11-05T00:00:00Z", 0.2);
        let evs = events_until(&mut s, "2026-11-12T00:00:00Z");
        let hours = RetailConfig::online_retail().hours;
        let mut per_hour = [0usize; 24];
        let mut per_day = [0usize; 7];
        let mut ids = HashSet::new();
        let mut last = i64::MIN;
        // Per session: its user, and its purchase lines (product -> quantities, times).
        let mut user_of: HashMap<String, i64> = HashMap::new();
        let mut lines: HashMap<(String, i64), Vec<i32>> = HashMap::new();
        let mut order_times: HashMap<String, HashSet<i64>> = HashMap::new();
        for (t, e) in &evs {
            assert!(*t >= last, "event-time order");
            last = *t;
            assert!(hours.is_open(*t), "an event at {t} while closed: {e:?}");
            assert!(ids.insert(e.event_id.clone()), "distinct event ids");
            assert!((crate::replay::SKU_ID_BASE..1 << 53).contains(&e.product_id));
            assert_eq!(e.currency, "GBP");
            per_hour[(t / 3_600_000 % 24) as usize] += 1;
            per_day[crate::retail::weekday(t.div_euclid(86_400_000))] += 1;
            let session = e.user_session.clone().unwrap();
            let user = *user_of.entry(session.clone()).or_insert(e.user_id);
            assert_eq!(user, e.user_id, "one user per session");
            if e.event_type == "purchase" {
                lines
                    .entry((session.clone(), e.product_id))
                    .or_default()
                    .push(e.quantity);
                order_times.entry(session).or_default().insert(*t);
            }
        }
        eprintln!(
            "retail week: {} events, per hour {per_hour:?}, per day {per_day:?}",
            evs.len()
        );
        assert!(evs.len() > 50_000, "{}", evs.len());
        assert_eq!(per_day[5], 0, "closed on Saturday");
        assert!(per_hour[..7].iter().chain(&per_hour[20..]).all(|n| *n == 0));
        // The hourly curve: noon against 08:00 (4.6 / 1.6).
        let r = per_hour[12] as f64 / per_hour[8] as f64;
        assert!((2.3..3.5).contains(&r), "noon/8h {r}");
        // Guests: a quarter of the sessions, ids in the guest range, one per session.
        let guests: Vec<i64> = user_of
            .values()
            .copied()
            .filter(|u| (crate::replay::GUEST_ID_BASE..crate::replay::SKU_ID_BASE).contains(u))
            .collect();
        let share = guests.len() as f64 / user_of.len() as f64;
        eprintln!("sessions {}, guest share {share:.3}", user_of.len());
        assert!((0.2..0.3).contains(&share), "guest share {share}");
        for (session, u) in &user_of {
            if guests.contains(u) {
                assert_eq!(*u, crate::replay::guest_user_id(Some(session)));
            }
        }
        // Repeated lines: the same product twice in one order at other quantities, each its own
        // event (ids were checked distinct above); an order's lines share one time.
        let repeated = lines
            .values()
            .filter(|q| q.iter().collect::<HashSet<_>>().len() > 1)
            .count();
        let orders = order_times.len();
        let n_lines: usize = lines.values().map(Vec::len).sum();
        eprintln!(
            "orders {orders}, lines {n_lines}, products bought at several quantities in one order \
             {repeated}"
        );
        assert!(
            repeated * 50 > orders && repeated * 2 < orders,
            "repeated {repeated} of {orders} orders"
        );
        assert!(order_times.values().all(|t| t.len() == 1));
    }

    #[test]
    fn a_retail_thursday_in_november_sells_about_two_and_a_half_february_ones() {
        let feb = events_until(
            &mut retail_sim(12, "2026-02-12T00:00:00Z", 1.0),
            "2026-02-13T00:00:00Z",
        )
        .len();
        let nov = events_until(
            &mut retail_sim(12, "2026-11-19T00:00:00Z", 1.0),
            "2026-11-20T00:00:00Z",
        )
        .len();
        let r = nov as f64 / feb as f64;
        eprintln!("feb {feb}, nov {nov}, ratio {r:.3} (demand curve 2.51)");
        assert!((2.25..2.75).contains(&r), "ratio {r}");
    }

    #[test]
    fn retail_is_deterministic_for_a_seed_and_the_default_store_has_no_retail_feature() {
        let run = |seed| {
            let mut s = retail_sim(seed, "2026-11-06T19:30:00Z", 2.0);
            // Over the Friday closing, the closed Saturday and the Sunday opening.
            events(&mut s, 20_000)
        };
        let a = run(3);
        assert_eq!(a, run(3));
        assert_ne!(a[..100], run(4)[..100]);
        let sunday = crate::clock::parse_instant("2026-11-08T07:00:00Z", 0).unwrap();
        assert!(a.iter().any(|(t, _)| *t >= sunday), "reopened on Sunday");
        // The default profile has none of the retail features.
        let evs = events(&mut sim_with(3, |_| {}), 20_000);
        assert!(evs
            .iter()
            .all(|(_, e)| e.user_id < crate::replay::GUEST_ID_BASE
                && e.product_id < crate::replay::SKU_ID_BASE
                && e.quantity <= 4));
    }

    #[test]
    fn free_products_are_never_sold_and_bad_configs_are_refused() {
        let mut catalog = Catalog::synthetic(1, 20, 5, 0);
        for p in catalog.products.iter_mut().skip(1) {
            p.price = 0.0;
        }
        let only = catalog.products[0].product_id;
        let mut s = Simulator::new(catalog.clone(), SimConfig::default()).unwrap();
        assert!(events(&mut s, 500)
            .iter()
            .all(|(_, e)| e.product_id == only));
        for p in catalog.products.iter_mut() {
            p.price = 0.0;
        }
        assert_eq!(
            Simulator::new(catalog, SimConfig::default()).err(),
            Some(SimError::NothingToSell)
        );
    }
}
