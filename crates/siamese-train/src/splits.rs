//! The unseen-class protocol repeated over several splits of the classes (`siamese
//! train --splits N`): with five test people, one split can be lucky, so the figure
//! reported is the mean over splits, with its spread and the number of splits on which
//! the model beats raw pixels.

use serde::{Deserialize, Serialize};
use siamese_metrics::Verification;

use crate::eval::EvalReport;

/// Test figures over several splits: mean, sample standard deviation, each split's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitsSummary {
    /// Splits run.
    pub splits: usize,
    /// The model's test equal error rate.
    pub test_eer: Spread,
    /// The model's test ROC AUC.
    pub test_roc_auc: Spread,
    /// Raw pixels' test equal error rate on the same pairs.
    pub pixel_test_eer: Spread,
    /// Raw pixels' test ROC AUC.
    pub pixel_test_roc_auc: Spread,
    /// Splits whose test EER is below raw pixels'.
    pub eer_below_pixels: usize,
    /// The model's test accuracy at the threshold chosen on validation pairs (what
    /// `siamese verify --scoring plain` delivers).
    #[serde(default = "Spread::none")]
    pub test_accuracy: Spread,
    /// The same figures with cohort score normalisation, when every split has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_normalised: Option<NormalisedSummary>,
}

/// Test figures over the splits with cohort score normalisation
/// ([`crate::eval::ScoreNormalised`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalisedSummary {
    /// The model's normalised test equal error rate.
    pub test_eer: Spread,
    /// The model's normalised test ROC AUC.
    pub test_roc_auc: Spread,
    /// Raw pixels' test equal error rate, normalised the same way.
    pub pixel_test_eer: Spread,
    /// Splits whose normalised test EER is below the normalised pixels'.
    pub eer_below_pixels: usize,
    /// Splits whose normalised test EER is below raw pixels' plain one.
    pub eer_below_plain_pixels: usize,
    /// The model's test accuracy at the normalised threshold chosen on validation pairs
    /// (what `siamese verify --scoring normalised` delivers).
    #[serde(default = "Spread::none")]
    pub test_accuracy: Spread,
    /// What `siamese verify` delivers by default: on each split the scoring with the
    /// lower validation EER ([`EvalReport::prefers_normalised`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_auto: Option<AutoSummary>,
}

/// The figures of `siamese verify --scoring auto` over the splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoSummary {
    /// Splits on which it normalises (the others score plain distances).
    pub normalised_splits: usize,
    /// Test accuracy at the chosen scoring's validation threshold.
    pub test_accuracy: Spread,
    /// Test EER of the chosen scoring.
    pub test_eer: Spread,
}

/// A figure over the splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Mean over the splits.
    pub mean: f64,
    /// Sample standard deviation over the splits.
    pub std: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
    /// Each split's, in order.
    pub each: Vec<f64>,
}

impl Spread {
    /// No figures (summaries written before a field existed).
    fn none() -> Self {
        Self::of(Vec::new())
    }

    /// The spread of these values (one per split).
    pub fn of(each: Vec<f64>) -> Self {
        let n = each.len() as f64;
        let mean = each.iter().sum::<f64>() / n;
        let std =
            (each.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let min = each.iter().copied().fold(f64::INFINITY, f64::min);
        let max = each.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self {
            mean,
            std,
            min,
            max,
            each,
        }
    }
}

impl SplitsSummary {
    /// The summary of these reports.
    pub fn of(reports: &[EvalReport]) -> Self {
        let pixel = |f: fn(&Verification) -> f64| -> Vec<f64> {
            reports
                .iter()
                .map(|r| r.pixel_baseline.as_ref().map_or(f64::NAN, f))
                .collect()
        };
        let (eer, pixel_eer) = (
            reports.iter().map(|r| r.test_eer).collect::<Vec<_>>(),
            pixel(|b| b.test_eer),
        );
        let below =
            |model: &[f64], pixels: &[f64]| model.iter().zip(pixels).filter(|(m, p)| m < p).count();
        let normalised: Option<Vec<_>> = reports
            .iter()
            .map(|r| r.score_normalised.as_ref())
            .collect();
        let score_normalised = normalised.map(|n| {
            let model: Vec<f64> = n.iter().map(|n| n.model.test_eer).collect();
            let pixels: Vec<f64> = n.iter().map(|n| n.pixels.test_eer).collect();
            // The scoring `verify` picks on each split, and its figures there.
            let picked: Vec<(bool, f64, f64)> = reports
                .iter()
                .zip(&n)
                .map(|(r, n)| match r.prefers_normalised() {
                    Some(true) => (true, n.model.test_accuracy, n.model.test_eer),
                    _ => (false, r.test_accuracy, r.test_eer),
                })
                .collect();
            NormalisedSummary {
                eer_below_pixels: below(&model, &pixels),
                eer_below_plain_pixels: below(&model, &pixel_eer),
                test_roc_auc: Spread::of(n.iter().map(|n| n.model.test_roc_auc).collect()),
                test_accuracy: Spread::of(n.iter().map(|n| n.model.test_accuracy).collect()),
                test_eer: Spread::of(model),
                pixel_test_eer: Spread::of(pixels),
                verify_auto: Some(AutoSummary {
                    normalised_splits: picked.iter().filter(|p| p.0).count(),
                    test_accuracy: Spread::of(picked.iter().map(|p| p.1).collect()),
                    test_eer: Spread::of(picked.iter().map(|p| p.2).collect()),
                }),
            }
        });
        Self {
            splits: reports.len(),
            eer_below_pixels: below(&eer, &pixel_eer),
            score_normalised,
            test_eer: Spread::of(eer),
            test_roc_auc: Spread::of(reports.iter().map(|r| r.test_roc_auc).collect()),
            test_accuracy: Spread::of(reports.iter().map(|r| r.test_accuracy).collect()),
            pixel_test_eer: Spread::of(pixel_eer),
            pixel_test_roc_auc: Spread::of(pixel(|b| b.test_roc_auc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_mean_sample_deviation_and_range() {
        let s = Spread::of(vec![0.02, 0.04, 0.06]);
        assert!((s.mean - 0.04).abs() < 1e-12 && (s.std - 0.02).abs() < 1e-12);
        assert_eq!((s.min, s.max, s.each.len()), (0.02, 0.06, 3));
    }

    /// A report with these test EERs: the model's, raw pixels', and, when given, the
    /// score-normalised model's and pixels'. Every validation EER is 0.1 but the
    /// normalised model's, 0.1 - (its test EER - 0.05): below 0.1 when that test EER is
    /// above 0.05. Test accuracies are 1 - 2 x the test EER.
    fn report(eer: f64, pixels: f64, normalised: Option<(f64, f64)>) -> EvalReport {
        let metrics = |eer: f64| {
            serde_json::json!({
                "roc_auc": 0.9, "eer": eer, "best_threshold": 1.0, "best_accuracy": 0.9
            })
        };
        let verification = |eer: f64, validation_eer: f64| {
            serde_json::json!({
                "validation": metrics(validation_eer), "threshold": 1.0,
                "test_accuracy": 1.0 - 2.0 * eer, "test_roc_auc": 1.0 - eer, "test_eer": eer
            })
        };
        let mut r = serde_json::json!({
            "validation": metrics(0.1), "threshold": 1.0, "test_accuracy": 1.0 - 2.0 * eer,
            "test_roc_auc": 1.0 - eer, "test_eer": eer, "knn5_accuracy": 0.9,
            "pixel_baseline": verification(pixels, 0.1),
        });
        if let Some((model, pixels)) = normalised {
            r["score_normalised"] = serde_json::json!({
                "cohort": 300, "top_k": 300,
                "model": verification(model, 0.1 - (model - 0.05)),
                "pixels": verification(pixels, 0.1)
            });
        }
        serde_json::from_value(r).unwrap()
    }

    #[test]
    fn normalised_figures_are_summarised_only_when_every_split_has_them() {
        // Model below plain pixels on split 1 only; normalised, below normalised pixels
        // on splits 1 and 2, below plain pixels on splits 1 and 3.
        let reports = [
            report(0.02, 0.03, Some((0.01, 0.02))),
            report(0.10, 0.05, Some((0.06, 0.07))),
            report(0.04, 0.04, Some((0.03, 0.01))),
        ];
        let s = SplitsSummary::of(&reports);
        assert_eq!(s.eer_below_pixels, 1);
        let n = s.score_normalised.expect("every split has them");
        assert_eq!(n.test_eer.each, [0.01, 0.06, 0.03]);
        assert_eq!(n.pixel_test_eer.each, [0.02, 0.07, 0.01]);
        assert_eq!((n.eer_below_pixels, n.eer_below_plain_pixels), (2, 2));
        // `verify --scoring auto` normalises where the normalised validation EER is the
        // lower: split 2 only (0.09 against 0.1); plain on splits 1 and 3.
        let auto = n.verify_auto.expect("with normalised figures");
        assert_eq!(auto.normalised_splits, 1);
        assert_eq!(auto.test_eer.each, [0.02, 0.06, 0.04]);
        let accuracy = |eers: [f64; 3]| eers.map(|e| 1.0 - 2.0 * e);
        assert_eq!(auto.test_accuracy.each, accuracy([0.02, 0.06, 0.04]));
        assert_eq!(n.test_accuracy.each, accuracy([0.01, 0.06, 0.03]));
        assert_eq!(s.test_accuracy.each, accuracy([0.02, 0.10, 0.04]));
        // One split without them (a report from before they existed): none at all,
        // rather than a mean over some of the splits.
        let mixed = [reports[0].clone(), report(0.02, 0.03, None)];
        assert!(SplitsSummary::of(&mixed).score_normalised.is_none());
    }
}
