//! The neural predictor and the context mixer together: the network's table enters the
//! mixer as a prior (see `context_mix`), so a segment unlike the training data still codes
//! about as well as the context mixer alone, and one like it about as well as the network.

use super::context_mix::{ContextMix, Tables};
use super::neural::Neural;
use super::table::{Interval, Predictor};

pub struct Mixed {
    pub(super) neural: Neural,
    context_mix: ContextMix,
}

impl Mixed {
    /// `tables`: `TABLES_WITH_PRIOR`, or an earlier release's.
    pub fn new(neural: Neural, tokens: usize, tables: Tables) -> Mixed {
        Mixed { neural, context_mix: ContextMix::new(tokens, tables) }
    }
}

impl Predictor for Mixed {
    fn interval(&mut self, token: u16) -> Interval {
        let prior = self.neural.table();
        self.context_mix.interval_with(Some(prior), token)
    }

    fn find(&mut self, target: u32) -> (u16, Interval) {
        let prior = self.neural.table();
        self.context_mix.find_with(Some(prior), target)
    }

    fn update(&mut self, token: u16) {
        let prior = self.neural.table();
        self.context_mix.learn(Some(prior), token);
        self.neural.update(token);
    }
}
