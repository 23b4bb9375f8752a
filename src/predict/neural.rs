//! The neural predictor: the integer transformer's output as the coder's frequency table.
//! Tables are computed lazily one segment at a time, or for many segments at once by
//! `prepare` (one batched forward step); both give the same integers.

use super::adapt::{Adapter, Rates};
use super::table::{FreqTable, Interval, Predictor};
use super::transformer::{Session, Transformer};
use crate::data::VOCAB;
use std::sync::Arc;

pub struct Neural {
    model: Arc<Transformer>,
    session: Session,
    table: Option<FreqTable>,
    adapter: Option<Adapter>,
}

impl Neural {
    /// A predictor for a segment of `tokens` tokens; with `rates`, its network learns as it
    /// codes (`adapt`).
    pub fn new(model: Arc<Transformer>, tokens: usize, rates: Option<Rates>) -> Neural {
        let adapter = rates.map(|r| Adapter::new(r, model.spec.width));
        let session = adapter.as_ref().map_or_else(|| model.session(tokens), |a| a.session(&model, tokens));
        Neural { model, session, table: None, adapter }
    }

    /// Compute the next token's table of every predictor in one batched step. All must share
    /// one model.
    pub fn prepare(preds: &mut [&mut Neural]) {
        let pending: Vec<usize> = (0..preds.len()).filter(|&i| preds[i].table.is_none()).collect();
        let Some(&first) = pending.first() else {
            return;
        };
        let model = Arc::clone(&preds[first].model);
        let mut sessions: Vec<&mut Session> = vec![];
        for (i, p) in preds.iter_mut().enumerate() {
            if pending.contains(&i) {
                debug_assert!(Arc::ptr_eq(&p.model, &model));
                sessions.push(&mut p.session);
            }
        }
        let mut out = model.forward(&mut sessions);
        let d = model.spec.width;
        let mut freqs = vec![0u32; VOCAB];
        let rows = out.logits.chunks_exact_mut(VOCAB).zip(out.hidden.chunks_exact(d)).zip(&out.shifts);
        for ((&i, ((row, hidden), &shift)), residual) in pending.iter().zip(rows).zip(out.residual.chunks_exact(d)) {
            if let Some(a) = &mut preds[i].adapter {
                a.adjust(hidden, shift, residual, row);
            }
            model.frequencies(row, &mut freqs);
            preds[i].table = Some(FreqTable::new(&freqs));
        }
    }

    pub fn table(&mut self) -> &FreqTable {
        if self.table.is_none() {
            Neural::prepare(&mut [self]);
        }
        self.table.as_ref().unwrap()
    }
}

impl Predictor for Neural {
    fn interval(&mut self, token: u16) -> Interval {
        self.table().interval(token)
    }

    fn find(&mut self, target: u32) -> (u16, Interval) {
        self.table().find(target)
    }

    fn update(&mut self, token: u16) {
        if self.table.is_none() {
            // The token's element must enter the cache before the next one is predicted.
            self.table();
        }
        if let (Some(a), Some(t)) = (&mut self.adapter, &self.table) {
            a.learn(t, token, &self.model, &mut self.session);
        }
        self.session.tokens.push(token);
        self.table = None;
    }
}
