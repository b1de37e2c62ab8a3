'use strict';
// The shape of the Node.js demo this project replaces, rebuilt for the benchmark: Fastify,
// Drizzle over node-postgres, amqplib. POST /orders inserts one row for a hard-coded
// customer and publishes `order.created` without publisher confirms; the consumer only
// logs. No outbox, no inbox, no invoices: a reference for bare intake, not a system.
const crypto = require('node:crypto');
const Fastify = require('fastify');
const { Pool } = require('pg');
const { drizzle } = require('drizzle-orm/node-postgres');
const { pgTable, uuid, text, jsonb, bigint, timestamp } = require('drizzle-orm/pg-core');
const amqp = require('amqplib');

const orders = pgTable('orders', {
  id: uuid('id').primaryKey(),
  customerId: uuid('customer_id').notNull(),
  currency: text('currency').notNull(),
  items: jsonb('items').notNull(),
  totalCents: bigint('total_cents', { mode: 'number' }).notNull(),
  status: text('status').notNull(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull(),
});
const CUSTOMER = '00000000-0000-4000-8000-000000000001';

async function main() {
  const db = drizzle(new Pool({ connectionString: process.env.DATABASE_URL }));
  const connection = await amqp.connect(process.env.AMQP_URL);
  const publisher = await connection.createChannel();
  await publisher.assertExchange('orders', 'topic', { durable: true });
  const consumer = await connection.createChannel();
  await consumer.assertQueue('order-created', { durable: true });
  await consumer.bindQueue('order-created', 'orders', 'order.created');
  await consumer.consume('order-created', (msg) => {
    console.log('order.created', msg.content.toString());
    consumer.ack(msg);
  });

  const app = Fastify();
  app.post('/orders', async (req, reply) => {
    const items = Array.isArray(req.body?.items) ? req.body.items : [];
    const [order] = await db.insert(orders).values({
      id: crypto.randomUUID(),
      customerId: CUSTOMER,
      currency: req.body?.currency ?? 'BRL',
      items,
      totalCents: items.reduce((sum, i) => sum + i.quantity * i.unit_price_cents, 0),
      status: 'pending',
      createdAt: new Date(),
    }).returning();
    publisher.publish('orders', 'order.created', Buffer.from(JSON.stringify(order)));
    return reply.code(201).send(order);
  });
  app.get('/health', async () => ({ ok: true }));
  const [host, port] = (process.env.HTTP_ADDR ?? '127.0.0.1:3635').split(':');
  await app.listen({ host, port: Number(port) });
}

main().catch((e) => { console.error(e); process.exit(1); });
