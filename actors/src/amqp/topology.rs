//! Declares the whole v1 topology. Every node declares all of it on every connect, so a
//! message published before its consumer ever ran is queued, not dropped as unroutable.

use contracts::topology::{self, ConsumedQueue};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Quorum queues count deliveries; past this many the broker dead-letters a message that
/// keeps being requeued (a backstop: consumers dead-letter poison messages themselves).
const DELIVERY_LIMIT: i64 = 20;

/// The queues of both nodes.
pub const ALL_QUEUES: [ConsumedQueue; 2] =
    [topology::INVOICES_NODE_INPUT, topology::ORDERS_NODE_INPUT];

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

/// Declares both exchanges, both consumed queues, and their dead-letter exchanges and queues.
pub async fn declare(channel: &Channel) -> Result<(), lapin::Error> {
    for exchange in topology::EXCHANGES {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                durable_exchange(),
                FieldTable::default(),
            )
            .await?;
    }
    for q in ALL_QUEUES {
        let dlx = topology::dead_letter_exchange(q.queue);
        let dlq = topology::dead_letter_queue(q.queue);
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Direct,
                durable_exchange(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(dlq.as_str().into(), durable_queue(), quorum_args())
            .await?;
        channel
            .queue_bind(
                dlq.as_str().into(),
                dlx.as_str().into(),
                q.queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut args = quorum_args();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.as_str().into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(q.queue.into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        channel
            .queue_declare(q.queue.into(), durable_queue(), args)
            .await?;
        channel
            .queue_bind(
                q.queue.into(),
                q.exchange.into(),
                q.pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
