//! A store worker applies the consumer batches it takes together in one transaction.

use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

use actors::amqp::{Delivered, HandleError, Incoming, Outcome};
use actors::db::Connections;
use actors::metrics::Metrics;
use actors::outbox::Causation;
use actors::relay::OutboxNotifier;
use actors::supervision::{Batches, ChildHandle};
use invoices_node::worker::{InvoicesStore, StoreMsg};
use testkit::TestEnv;

use crate::{order_created, spawn_invoices};

type Answer = oneshot::Receiver<Result<Vec<Outcome>, HandleError>>;

/// A lane's batch of `order.created` events for `orders`, as the worker receives it.
fn lane_batch(orders: &[Uuid]) -> (StoreMsg, Answer) {
    let (reply, answer) = oneshot::channel();
    let batch = orders
        .iter()
        .map(|id| Incoming {
            event: order_created(*id),
            delivered: Delivered {
                cause: Causation::default(),
                redelivered: false,
                span: tracing::Span::none(),
            },
        })
        .collect();
    (
        StoreMsg::ApplyOrderEvents {
            batch,
            reply: reply.into(),
        },
        answer,
    )
}

async fn answer_of(answer: Answer) -> Result<Vec<Outcome>, HandleError> {
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("answered in time")
        .expect("answered")
}

async fn invoices_for(db: &sqlx::PgPool, orders: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM invoices WHERE order_id = ANY($1)")
        .bind(orders)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn batches_taken_together_commit_as_one_and_a_single_event_stays_alone() {
    let env = TestEnv::new();
    // The node creates and migrates the database; the test then drives a store directly,
    // so that which batches a worker takes together is decided here, not by timing.
    let (node, _) = spawn_invoices(&env, &[]).await;
    node.shutdown().await;
    let db = env.pg(&env.database("invoices")).await;
    let store = InvoicesStore {
        pool: db.clone(),
        connections: Connections::new(db.clone()),
        notifier: OutboxNotifier::new(ChildHandle::default()),
        metrics: Metrics::new("invoices-node"),
        payment_terms: Duration::from_secs(30 * 86_400),
    };

    // Two lanes' batches: one transaction, so one `now()` for every inbox row.
    let first: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let second: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    let (a, a_answer) = lane_batch(&first);
    let (b, b_answer) = lane_batch(&second);
    store.handle(vec![a, b]).await;
    assert_eq!(
        answer_of(a_answer).await.unwrap(),
        vec![Outcome::Applied; 3]
    );
    assert_eq!(
        answer_of(b_answer).await.unwrap(),
        vec![Outcome::Applied; 2]
    );
    let all: Vec<Uuid> = first.iter().chain(&second).copied().collect();
    assert_eq!(invoices_for(&db, &all).await, 5);
    let commits: i64 = sqlx::query_scalar("SELECT count(DISTINCT processed_at) FROM inbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        commits, 1,
        "the two batches were not applied in one transaction"
    );

    // A failing event fails the whole merged attempt, and nothing of it is kept (its lanes
    // then retry their events alone); a batch of one event is applied by itself.
    let poison = Uuid::new_v4();
    env.reject_rows("invoices", "invoices", "order_id", &poison.to_string())
        .await;
    let with_poison = [Uuid::new_v4(), poison];
    let beside = [Uuid::new_v4(), Uuid::new_v4()];
    let alone = [Uuid::new_v4()];
    let (c, c_answer) = lane_batch(&with_poison);
    let (d, d_answer) = lane_batch(&beside);
    let (e, e_answer) = lane_batch(&alone);
    store.handle(vec![c, d, e]).await;
    assert!(matches!(
        answer_of(c_answer).await,
        Err(HandleError::Failed(_))
    ));
    assert!(matches!(
        answer_of(d_answer).await,
        Err(HandleError::Failed(_))
    ));
    assert_eq!(answer_of(e_answer).await.unwrap(), vec![Outcome::Applied]);
    assert_eq!(invoices_for(&db, &with_poison).await, 0);
    assert_eq!(invoices_for(&db, &beside).await, 0);
    assert_eq!(invoices_for(&db, &alone).await, 1);
    db.close().await;
}
