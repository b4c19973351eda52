//! Event delivery: the subscriber runs on a thread of its own, so a slow one (a terminal
//! that cannot keep up, a log shipper on a slow network) never stalls a running step. The
//! build waits for every event to be delivered before it returns.

use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

use crate::event::{Event, EventSink};

enum Message {
    Event(Box<Event>),
    /// Answered once every event sent before it has been delivered.
    Flush(Sender<()>),
}

/// The sending side of one build's event delivery.
pub(crate) struct Delivery {
    tx: Sender<Message>,
}

impl Delivery {
    /// Starts delivering to `subscriber`; returns the delivery and the sink the build sends
    /// to (it only queues).
    pub(crate) fn start(subscriber: EventSink) -> std::io::Result<(Delivery, EventSink)> {
        let (tx, rx) = channel::<Message>();
        std::thread::Builder::new()
            .name("strata-events".to_owned())
            .spawn(move || {
                // Ends when every sender is gone.
                for message in rx {
                    match message {
                        Message::Event(event) => subscriber(&event),
                        Message::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        let sender = tx.clone();
        let sink: EventSink = Arc::new(move |event: &Event| {
            // The delivery thread only stops when every sender is gone, so this cannot fail
            // while the build runs; an event sent after that has no one to go to.
            let _ = sender.send(Message::Event(Box::new(event.clone())));
        });
        Ok((Delivery { tx }, sink))
    }

    /// Waits until every event sent so far has been delivered.
    pub(crate) fn flush(&self) {
        let (done, wait) = channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    #[test]
    fn a_slow_subscriber_does_not_hold_up_the_sender_and_flush_waits_for_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let (delivery, sink) = Delivery::start(Arc::new(move |event: &Event| {
            std::thread::sleep(Duration::from_millis(20));
            record.lock().unwrap().push(event.clone());
        }))
        .unwrap();
        let started = Instant::now();
        for i in 0..50 {
            sink(&Event::Built {
                digest: format!("sha256:{i}"),
            });
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "sending 50 events took {:?}: the sender waited for the subscriber",
            started.elapsed()
        );
        delivery.flush();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 50, "every event delivered before flush returns");
        assert_eq!(
            seen.last(),
            Some(&Event::Built {
                digest: "sha256:49".to_owned()
            }),
            "in order"
        );
    }
}
