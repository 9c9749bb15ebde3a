//! `siamese export`: a checkpoint's tower as an ONNX file (siamese-onnx), with the
//! checkpoint's threshold and provenance as the model's metadata properties.

use anyhow::{bail, Context, Result};
use siamese_model::Embedder;

use crate::args::ExportArgs;
use crate::commands::load_model;

pub(crate) fn export(a: ExportArgs) -> Result<()> {
    if a.out.extension().and_then(|e| e.to_str()) != Some("onnx") {
        bail!("{}: the output must end in .onnx", a.out.display());
    }
    let (tower, ckpt) = load_model(&a.model)?;
    // The checkpoint's own entries (threshold, step, data set, preprocessing, ...), then
    // what identifies the tower: its config and the fingerprint galleries check. The
    // score-normalisation record stays behind with its cohort, which is not exported:
    // its threshold means nothing without it.
    let mut metadata: Vec<(String, String)> = ckpt
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != siamese_model::checkpoint::keys::SCORE_NORM)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.push((
        "model_config".into(),
        serde_json::to_string(&ckpt.config).context("the model config")?,
    ));
    metadata.push(("fingerprint".into(), ckpt.fingerprint()?));
    let bytes = siamese_onnx::export(&tower, &metadata)
        .with_context(|| format!("exporting {}", a.model.display()))?;
    siamese_data::write_atomic(&a.out, &bytes)?;
    let c = tower.config();
    let threshold = ckpt
        .metadata
        .get(siamese_model::checkpoint::keys::THRESHOLD)
        .map_or(String::new(), |t| format!(", threshold {t}"));
    eprintln!(
        "wrote {} ({} bytes): input images [N, {}, {}, {}] (pixels / 255), output \
         embeddings [N, {}]{threshold}",
        a.out.display(),
        bytes.len(),
        c.input_channels,
        c.input_height,
        c.input_width,
        tower.embedding_dim(),
    );
    Ok(())
}
