//! The `vigil.acquire` span: recorded by every checkout that has to wait,
//! ping or connect, with what it did and how it ended; never by one served
//! at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::pool;
use crate::support::fake::Fake;

/// A closed span: its name and its fields as text.
#[derive(Debug, Clone, Default)]
struct Closed {
    name: &'static str,
    fields: Vec<(String, String)>,
}

impl Closed {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Visit for Closed {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields.push((
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        ));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .push((field.name().to_owned(), value.to_owned()));
    }
}

/// Collects every span as it closes.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Closed>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut closed = Closed {
            name: attrs.metadata().name(),
            ..Closed::default()
        };
        attrs.record(&mut closed);
        ctx.span(id).unwrap().extensions_mut().insert(closed);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(closed) = ctx.span(id).unwrap().extensions_mut().get_mut::<Closed>() {
            values.record(closed);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(closed) = ctx.span(&id).unwrap().extensions_mut().remove::<Closed>() {
            self.0.lock().unwrap().push(closed);
        }
    }
}

impl Spans {
    fn acquires(&self) -> Vec<Closed> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.name == "vigil.acquire")
            .cloned()
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_checkout_that_waits_or_connects_records_a_span_and_one_served_at_once_does_not() {
    let spans = Spans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let fake = Fake::new();
    fake.script.set_connect_delay(Duration::from_millis(20));
    let pool = pool(&fake, 1);

    // An empty pool: a connect.
    let held = pool.get().await.unwrap();
    // A full one: the line, until the connection comes back 100 ms later.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);
    waiter.await.unwrap().unwrap();
    let before = spans.acquires().len();
    // Served at once from the idle set: no span.
    drop(pool.get().await.unwrap());
    assert_eq!(
        spans.acquires().len(),
        before,
        "the fast path records nothing"
    );
    // Out of time in line.
    let held = pool.get().await.unwrap();
    let timed_out = tokio::time::timeout(Duration::from_secs(10), pool.get()).await;
    drop(held);
    assert!(matches!(timed_out, Ok(Err(vigil::Error::Timeout { .. }))));

    let got = spans.acquires();
    let summary: Vec<_> = got
        .iter()
        .map(|s| {
            (
                s.field("pool").unwrap_or("?").to_owned(),
                s.field("in_line").unwrap_or("?").to_owned(),
                s.field("last_step").unwrap_or("?").to_owned(),
                s.field("outcome").unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("default", "false", "connecting", "lent"),
        ("default", "true", "waiting", "lent"),
        ("default", "true", "waiting", "timed_out"),
    ]
    .map(|(a, b, c, d)| (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned()));
    assert_eq!(summary, expected);
}
