//! Captures the `tracing` events of the current thread, as text, for the tests that check what the
//! checker reports.

use std::{
    fmt::{self, Write},
    sync::{Arc, Mutex},
};

use tracing::{
    field::{Field, Visit},
    span, subscriber, Event, Level, Metadata, Subscriber,
};

/// One event: its level, and its fields as `name=value` (the message first).
#[derive(Debug, Clone)]
pub struct Captured {
    pub level: Level,
    pub text: String,
}

/// The events captured so far; capturing stops when this is dropped.
pub struct Events {
    events: Arc<Mutex<Vec<Captured>>>,
    _guard: subscriber::DefaultGuard,
}

impl Events {
    pub fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut self.events.lock().unwrap())
    }
}

/// Captures the events of this thread from now on.
pub fn capture() -> Events {
    let events = Arc::default();
    let collector = Collector {
        events: Arc::clone(&events),
    };
    Events {
        events,
        _guard: subscriber::set_default(collector),
    }
}

struct Collector {
    events: Arc<Mutex<Vec<Captured>>>,
}

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Collector {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.events.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            text: text.0,
        });
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
}
