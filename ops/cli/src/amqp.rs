//! The broker side of the tool: a confirm-mode connection, counting a queue, and browsing a
//! queue without consuming it.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::OpsError;

/// One connection with a publishing channel in confirm mode.
pub struct Broker {
    url: String,
    connection: Connection,
    pub channel: Channel,
}

impl Broker {
    pub async fn connect(url: &str) -> Result<Self, OpsError> {
        let props = ConnectionProperties::default().with_connection_name("ops".into());
        let connection = Connection::connect(url, props).await?;
        // So that a drill whose own connection fails says why.
        actors::amqp::on_failure(&connection, |e| {
            eprintln!("[ops] the broker connection failed: {e}")
        });
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            url: url.to_owned(),
            connection,
            channel,
        })
    }

    /// Messages in `queue` that no consumer holds (passive declare: fails if it is missing).
    pub async fn ready_count(&self, queue: &str) -> Result<u32, OpsError> {
        if !self.connection.status().connected() {
            // The tool's own connection failed under it (seen once in a CI drill, cause
            // not found yet; the listener in `connect` now prints it). Counting needs no
            // state of this connection: say so and count on a new one.
            eprintln!("[ops] the broker connection is down; counting {queue} on a new connection");
            let fresh = Broker::connect(&self.url).await?;
            let count = Box::pin(fresh.ready_count(queue)).await;
            fresh.close().await;
            return count;
        }
        // A failed passive declare closes the channel it ran on: use a throwaway one.
        let channel = self.connection.create_channel().await?;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "counted".into()).await;
        Ok(q.message_count())
    }

    /// Publishes and waits for the broker's confirm; `false` if the broker refused it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<bool, OpsError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(matches!(confirm, Confirmation::Ack(_)))
    }

    /// Takes up to `limit` messages of `queue` without acknowledging them: each stays in the
    /// queue unless the caller settles it, and whatever is not settled goes back when the
    /// browse is released (or the process dies).
    pub async fn browse(&self, queue: &str, limit: u16) -> Result<Browse, OpsError> {
        let ready_before = self.ready_count(queue).await?;
        let expected = ready_before.min(u32::from(limit));
        let channel = self.connection.create_channel().await?;
        channel.basic_qos(limit, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "ops-browse".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut messages = Vec::new();
        // Stop at the count seen before, or when nothing more arrives for a while.
        while messages.len() < expected as usize {
            match tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
                Ok(Some(delivery)) => messages.push(delivery?),
                _ => break,
            }
        }
        Ok(Browse {
            channel,
            messages,
            queue: queue.to_owned(),
            ready_before,
            settled: 0,
        })
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Messages held by a browse: settle some, release the rest.
pub struct Browse {
    channel: Channel,
    pub messages: Vec<Delivery>,
    queue: String,
    ready_before: u32,
    settled: u32,
}

impl Browse {
    /// Acknowledges message `i`: it leaves the queue for good.
    pub async fn ack(&mut self, i: usize) -> Result<(), OpsError> {
        if let Some(delivery) = self.messages.get(i) {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            self.settled += 1;
        }
        Ok(())
    }

    /// Returns every unsettled message to its queue, and waits (up to 5 s) until the queue
    /// shows them ready again: the broker requeues them after the channel closed, so without
    /// the wait a command run right after this one could find them missing.
    pub async fn release(self, broker: &Broker) {
        // Closing the channel requeues what it holds, in order.
        let _ = self.channel.close(200, "browsed".into()).await;
        let back = self.ready_before.saturating_sub(self.settled);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            match broker.ready_count(&self.queue).await {
                Ok(ready) if ready < back => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return,
            }
        }
    }
}
