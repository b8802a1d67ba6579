//! Drives the model along a recorded trace of the real runtime: every step must be one the
//! model enables from the state it is in, so a trace the model does not admit fails loudly.

use crate::model::{Action, ClientId, LockModel, Msg, Phase, State, UNITS};
use stateright::Model;
use std::time::Duration;

/// What the network did to a request, as a test scripted it with `FaultyBackend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// `Fault::LoseAnswer`: processed, answer lost.
    LoseAnswer,
    /// `Fault::Fail` or `Fault::Hang` (never reaches the store; the caller sees an error).
    Fail,
}

/// A model run being driven along a trace, one enabled step at a time.
#[derive(Debug)]
pub struct Replay {
    /// The model (its tick should be the trace's time resolution).
    pub model: LockModel,
    /// The current state.
    pub state: State,
    /// The steps taken so far.
    pub steps: Vec<Action>,
}

impl Replay {
    /// Starts from the initial state in which every clock runs at the store's rate (the
    /// runtime's tests run on one paused clock).
    pub fn new(model: LockModel) -> Self {
        let state = model
            .init_states()
            .into_iter()
            .find(|s| s.clients.iter().all(|c| c.rate == UNITS))
            .expect("an initial state with nominal clocks");
        Replay {
            model,
            state,
            steps: Vec::new(),
        }
    }

    /// Takes `action`, which must be enabled.
    pub fn step(&mut self, action: Action) -> Result<(), String> {
        let mut enabled = Vec::new();
        self.model.actions(&self.state, &mut enabled);
        if !enabled.contains(&action) {
            return Err(format!(
                "step {} ({action:?}) is not enabled at t={} in {:?}; enabled: {enabled:?}",
                self.steps.len(),
                self.state.t,
                self.state
            ));
        }
        self.state = self
            .model
            .next_state(&self.state, action)
            .ok_or_else(|| format!("step {action:?} changed nothing"))?;
        self.steps.push(action);
        Ok(())
    }

    /// Lets store time pass until `at` (a duration since the trace's start, rounded down to
    /// whole ticks).
    pub fn advance_to(&mut self, at: Duration) -> Result<(), String> {
        let target = self.ticks(at);
        while self.state.t < target {
            self.step(Action::Tick)?;
        }
        Ok(())
    }

    /// `at` in whole ticks.
    pub fn ticks(&self, at: Duration) -> u16 {
        let t = at.as_nanos() / self.model.tick.as_nanos().max(1);
        u16::try_from(t).unwrap_or(u16::MAX)
    }

    /// The client starts its next call (an acquire attempt or a renewal).
    pub fn send(&mut self, c: ClientId) -> Result<(), String> {
        self.step(Action::Send(c))
    }

    /// Runs the network and store for `c` until it waits for no answer: its requests are
    /// processed in order, the first one suffering `fault`.
    pub fn settle(&mut self, c: ClientId, mut fault: Option<NetFault>) -> Result<(), String> {
        for _ in 0..32 {
            if self.state.clients[usize::from(c)].awaiting().is_none() {
                return Ok(());
            }
            let next = self
                .state
                .net
                .iter()
                .find(|m| match m {
                    Msg::Request { from, .. } => *from == c,
                    Msg::Answer { to, .. } => *to == c,
                })
                .copied()
                .ok_or_else(|| format!("client {c} waits, but nothing is in flight"))?;
            let action = match (next, fault.take()) {
                (Msg::Request { .. }, Some(NetFault::LoseAnswer)) => Action::LoseAnswer(next),
                (Msg::Request { .. }, Some(NetFault::Fail)) => Action::Fail(next),
                (Msg::Answer { .. }, Some(f)) => {
                    fault = Some(f);
                    Action::Deliver(next)
                }
                (_, None) => Action::Deliver(next),
            };
            self.step(action)?;
        }
        Err(format!("client {c} never settled"))
    }

    /// The client's guard deadline (`valid_until`) as a duration since the start, if it holds.
    pub fn deadline(&self, c: ClientId) -> Option<Duration> {
        match self.state.clients[usize::from(c)].phase {
            Phase::Holding(h) => Some(self.model.duration(h.deadline)),
            _ => None,
        }
    }

    /// The client's fencing token, if it holds.
    pub fn token(&self, c: ClientId) -> Option<u8> {
        match self.state.clients[usize::from(c)].phase {
            Phase::Holding(h) => Some(h.token),
            _ => None,
        }
    }

    /// Whether the client believes it holds the lock now.
    pub fn believes(&self, c: ClientId) -> bool {
        self.state.clients[usize::from(c)].believes(self.state.t)
    }

    /// Whether every property the model checks holds in the current state.
    pub fn properties_hold(&self) -> Result<(), String> {
        for p in self.model.properties() {
            let holds = (p.condition)(&self.model, &self.state);
            if matches!(p.expectation, stateright::Expectation::Always) && !holds {
                return Err(format!("{} fails after {:?}", p.name, self.steps));
            }
        }
        Ok(())
    }
}
