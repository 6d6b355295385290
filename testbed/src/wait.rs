//! Polling for a condition with a deadline.

use std::thread;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Polls `probe` until it returns `Ok(value)` or `timeout` passes. The probe returns
/// `Err(observation)` while the condition does not hold; the last observation is part of the
/// timeout error, so a failing test says what it saw.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                return Err(Error::WaitTimedOut {
                    what: what.into(),
                    timeout,
                    last: (!last.is_empty()).then_some(last),
                });
            }
            Err(_) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let v = wait_until("third call", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn times_out_with_the_last_observation() {
        let err = wait_until::<()>(
            "never",
            Duration::from_millis(50),
            || Err("still no".into()),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("waiting for never"), "{msg}");
        assert!(msg.contains("still no"), "{msg}");
    }
}
