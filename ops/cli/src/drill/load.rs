//! Steady order load with a share of cancels and payments, and the ledger of what the
//! system answered: which orders it accepted (201), what the drill then did to each, and
//! every 5xx with its moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::rng::Rng;

/// What the drill did to an accepted order after creating it, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Left alone: it must end invoiced, its invoice issued.
    Nothing,
    /// Canceled (200): it must end canceled, its invoice void.
    Canceled,
    /// Paid (200): it must end paid, its invoice paid.
    Paid,
    /// The cancel or pay got no clear answer (the replica died meanwhile): either outcome
    /// is right, as long as order and invoice agree.
    Unsure,
}

pub struct Accepted {
    pub at: Duration,
    pub intent: Intent,
}

/// A 5xx, or a request that got no answer at all (a replica killed under it).
pub struct Failure {
    pub at: Duration,
    pub route: &'static str,
    /// `None`: no HTTP answer (connection refused or reset).
    pub status: Option<u16>,
}

#[derive(Default)]
pub struct Ledger {
    pub accepted: HashMap<Uuid, Accepted>,
    pub failures: Vec<Failure>,
    pub requests: u64,
}

/// The drill's load, running until [`Load::stop`].
pub struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    orders: Arc<[String]>,
    invoices: Arc<[String]>,
    ledger: Arc<Mutex<Ledger>>,
    rng: Arc<Mutex<Rng>>,
    started: Instant,
}

impl Ctx {
    fn record(&self, f: impl FnOnce(&mut Ledger)) {
        f(&mut self.ledger.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn roll(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unit()
    }

    fn pick<'a>(&self, urls: &'a [String]) -> &'a str {
        let i = (self.roll() * urls.len() as f64) as usize;
        &urls[i.min(urls.len().saturating_sub(1))]
    }

    /// Sends, records a 5xx or a missing answer, and returns the status and body.
    async fn send(
        &self,
        route: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Option<(u16, Value)> {
        self.record(|l| l.requests += 1);
        let at = self.started.elapsed();
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.json::<Value>().await.unwrap_or(Value::Null);
                if status >= 500 {
                    self.record(|l| {
                        l.failures.push(Failure {
                            at,
                            route,
                            status: Some(status),
                        })
                    });
                }
                Some((status, body))
            }
            Err(_) => {
                self.record(|l| {
                    l.failures.push(Failure {
                        at,
                        route,
                        status: None,
                    })
                });
                None
            }
        }
    }
}

impl Load {
    /// `rate` orders per second spread over the orders replicas; of the accepted orders,
    /// 10% are canceled and 10% paid once invoiced.
    pub fn start(
        http: reqwest::Client,
        orders: Vec<String>,
        invoices: Vec<String>,
        rate: f64,
        seed: u64,
        started: Instant,
    ) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop, mut stopped) = watch::channel(false);
        let ctx = Ctx {
            http,
            orders: orders.into(),
            invoices: invoices.into(),
            ledger: ledger.clone(),
            rng: Arc::new(Mutex::new(Rng::new(seed ^ 0x10ad))),
            started,
        };
        let task = tokio::spawn(async move {
            // Bounds what piles up while a replica hangs; requests time out after 10 s.
            let slots = Arc::new(Semaphore::new(512));
            let mut tasks = JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    one_order(&ctx).await;
                    drop(slot);
                });
                while tasks.try_join_next().is_some() {}
            }
            // Let the orders in flight and their cancels and payments finish.
            let _ = tokio::time::timeout(Duration::from_secs(60), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        });
        Load { ledger, stop, task }
    }

    /// Stops sending, waits for what is in flight, and hands over the ledger.
    pub async fn stop(self) -> Ledger {
        self.stop.send_replace(true);
        let _ = self.task.await;
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *ledger)
    }

    pub fn accepted_so_far(&self) -> usize {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .accepted
            .len()
    }
}

fn order_body(ctx: &Ctx) -> Value {
    let quantity = 1 + (ctx.roll() * 5.0) as u64;
    json!({
        "customer_id": Uuid::new_v4(),
        "currency": "BRL",
        "items": [{"sku": "DRILL-1", "quantity": quantity, "unit_price_cents": 1250}],
    })
}

async fn one_order(ctx: &Ctx) {
    let url = format!("{}/orders", ctx.pick(&ctx.orders));
    let req = ctx.http.post(url).json(&order_body(ctx));
    let Some((201, body)) = ctx.send("POST /orders", req).await else {
        return;
    };
    let Some(id) = body["id"].as_str().and_then(|s| s.parse::<Uuid>().ok()) else {
        return;
    };
    let at = ctx.started.elapsed();
    ctx.record(|l| {
        l.accepted.insert(
            id,
            Accepted {
                at,
                intent: Intent::Nothing,
            },
        );
    });
    let roll = ctx.roll();
    let intent = if roll < 0.1 {
        tokio::time::sleep(Duration::from_millis((ctx.roll() * 300.0) as u64)).await;
        cancel(ctx, id).await
    } else if roll < 0.2 {
        pay(ctx, id).await
    } else {
        return;
    };
    ctx.record(|l| {
        if let Some(a) = l.accepted.get_mut(&id) {
            a.intent = intent;
        }
    });
}

async fn cancel(ctx: &Ctx, id: Uuid) -> Intent {
    let url = format!("{}/orders/{id}/cancel", ctx.pick(&ctx.orders));
    match ctx
        .send("POST /orders/{id}/cancel", ctx.http.post(url))
        .await
    {
        Some((200, _)) => Intent::Canceled,
        // 409 means paid — the drill never pays an order it cancels — so: left alone.
        Some((409, _)) => Intent::Nothing,
        _ => Intent::Unsure,
    }
}

async fn pay(ctx: &Ctx, order: Uuid) -> Intent {
    // The invoice appears once the order event went through the broker.
    let deadline = Instant::now() + Duration::from_secs(30);
    let invoice = loop {
        if Instant::now() > deadline {
            return Intent::Nothing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let url = format!("{}/invoices?order_id={order}", ctx.pick(&ctx.invoices));
        if let Some((200, body)) = ctx.send("GET /invoices", ctx.http.get(url)).await
            && let Some(id) = body["items"][0]["id"].as_str()
        {
            break id.to_owned();
        }
    };
    let url = format!("{}/invoices/{invoice}/pay", ctx.pick(&ctx.invoices));
    match ctx
        .send("POST /invoices/{id}/pay", ctx.http.post(url))
        .await
    {
        Some((200, _)) => Intent::Paid,
        Some((409, _)) => Intent::Nothing,
        _ => Intent::Unsure,
    }
}
