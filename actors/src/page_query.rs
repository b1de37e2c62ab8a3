//! The statement of one newest-first keyset page, with only the filters a request gives.
//!
//! Each combination of filters is a statement text of its own. Connections plan each
//! statement once for any parameters ([`crate::db::KEY_LOOKUPS_ONLY`]), and one statement
//! for every combination (`$1 IS NULL OR customer_id = $1 …`) would get one plan for all
//! of them, which cannot pick the index that fits the filters of a given request.

use sqlx::{Encode, Postgres, QueryBuilder, Type};

use crate::http::Cursor;

pub struct PageQuery {
    sql: QueryBuilder<Postgres>,
    filtered: bool,
}

impl PageQuery {
    /// `select_from` is `SELECT … FROM <table>`, without a `WHERE`.
    pub fn new(select_from: &str) -> Self {
        Self {
            sql: QueryBuilder::new(select_from),
            filtered: false,
        }
    }

    fn and(&mut self) {
        self.sql
            .push(if self.filtered { " AND " } else { " WHERE " });
        self.filtered = true;
    }

    /// Only rows whose `column` equals `value`, when there is a value.
    pub fn filter<T>(mut self, column: &'static str, value: Option<T>) -> Self
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres>,
    {
        if let Some(value) = value {
            self.and();
            self.sql.push(column).push(" = ").push_bind(value);
        }
        self
    }

    /// Newest first by `(at, id)`, after `after` when given, at most `limit` rows.
    pub fn page(
        mut self,
        at: &'static str,
        id: &'static str,
        after: Option<Cursor>,
        limit: i64,
    ) -> QueryBuilder<Postgres> {
        if let Some(cursor) = after {
            self.and();
            self.sql
                .push(format_args!("({at}, {id}) < ("))
                .push_bind(cursor.at)
                .push(", ")
                .push_bind(cursor.id)
                .push(")");
        }
        self.sql
            .push(format_args!(" ORDER BY {at} DESC, {id} DESC LIMIT "))
            .push_bind(limit);
        self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn each_combination_of_filters_is_its_own_statement() {
        let select = "SELECT id FROM orders";
        let none = PageQuery::new(select)
            .filter("customer_id", None::<uuid::Uuid>)
            .page("created_at", "id", None, 51);
        assert_eq!(
            none.sql().as_str(),
            "SELECT id FROM orders ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        let cursor = Cursor {
            at: DateTime::from_timestamp_micros(1).expect("a time"),
            id: uuid::Uuid::nil(),
        };
        let all = PageQuery::new(select)
            .filter("customer_id", Some(uuid::Uuid::nil()))
            .filter("status", Some("pending"))
            .page("created_at", "id", Some(cursor), 51);
        assert_eq!(
            all.sql().as_str(),
            "SELECT id FROM orders WHERE customer_id = $1 AND status = $2 \
             AND (created_at, id) < ($3, $4) ORDER BY created_at DESC, id DESC LIMIT $5"
        );
    }
}
