//! Hyper-parameter search on a validation split carved out of the training 80 %, so the
//! held-out 20 % test split is never looked at while choosing. Run:
//! `cargo run --release -p falcon-model --example tune`
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
use std::path::Path;

use falcon_model::dataset::{Dataset, stratified_split};
use falcon_model::logistic::{ClassWeight, TrainConfig};
use falcon_model::tfidf::TfidfConfig;
use falcon_model::{TrainOptions, load_vader_dir, train};

fn subset(d: &Dataset, idx: &[usize]) -> Dataset {
    Dataset {
        texts: idx.iter().map(|&i| d.texts[i].clone()).collect(),
        labels: idx.iter().map(|&i| d.labels[i]).collect(),
        label_names: d.label_names.clone(),
        sha256: d.sha256.clone(),
        files: vec![],
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = load_vader_dir(Path::new("data/vader"))?;
    let (train_idx, _test_idx) = stratified_split(&data.labels, 0.2, 42);
    // train() splits again (seed 7): the inner 20 % is the validation set.
    let dev = subset(&data, &train_idx);
    println!("{:<9} {:<6} {:<9} {:>5}  {:>8} {:>8}", "sublinear", "min_df", "weight", "C", "val_acc", "val_F1");
    for sublinear_tf in [true] {
        for min_df in [1] {
            for class_weight in [ClassWeight::SqrtBalanced, ClassWeight::Balanced, ClassWeight::Uniform] {
                for c in [8.0, 16.0, 32.0] {
                    let opts = TrainOptions {
                        seed: 7,
                        test_fraction: 0.2,
                        tfidf: TfidfConfig { min_n: 1, max_n: 2, min_df, sublinear_tf },
                        optimizer: TrainConfig { c, class_weight, ..TrainConfig::default() },
                    };
                    let m = train(&dev, &opts)?;
                    let e = &m.meta().metrics;
                    println!(
                        "{sublinear_tf:<9} {min_df:<6} {:<9} {c:>5}  {:>8.4} {:>8.4}",
                        format!("{class_weight:?}"),
                        e.accuracy,
                        e.macro_f1
                    );
                }
            }
        }
    }
    Ok(())
}
