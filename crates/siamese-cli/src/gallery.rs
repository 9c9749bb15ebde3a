//! Using embeddings: `siamese explore` (the explorer page, [`siamese_train::explore`]),
//! `siamese index` and `siamese search` (a split embedded into a gallery file, and the
//! gallery items nearest to query images, [`siamese_search`]).

use anyhow::{bail, Context, Result};
use siamese_model::Embedder;
use siamese_search::Gallery;
use siamese_train::eval::embed_set;

use crate::args::{ExploreArgs, IndexArgs, SearchArgs, SplitName};
use crate::commands::{data_and_paths_for, device, embed_files, load_model, read_embeddings};

/// Largest gallery file read whole into memory (the format's value limit, plus
/// metadata).
const MAX_GALLERY_BYTES: u64 = (siamese_search::MAX_VALUES as u64) * 4 + (200 << 20);

pub(crate) fn explore(a: ExploreArgs) -> Result<()> {
    use siamese_train::explore::{explorer_html, Exploration};
    use siamese_train::LabelledEmbeddings;
    let page = match (&a.model, &a.embeddings) {
        (Some(model), _) => {
            let (tower, ckpt) = load_model(model)?;
            let (data, _) = data_and_paths_for(&a.source, &ckpt)?;
            let set = split(&data, a.split);
            let values = embed_set(&tower, set, &siamese_data::Batcher::new(device()?))?;
            let threshold = siamese_train::Provenance::from_checkpoint(&ckpt)?.threshold;
            explorer_html(&Exploration {
                title: &format!(
                    "{} {:?} embeddings ({})",
                    data.spec.name,
                    a.split,
                    model.display()
                ),
                set: LabelledEmbeddings {
                    embeddings: &values,
                    dim: tower.embedding_dim(),
                    labels: set.labels(),
                    class_names: &data.spec.class_names,
                    paths: &[],
                    images: Some((set.pixels(), set.rows(), set.cols())),
                },
                threshold,
            })?
        }
        (None, Some(file)) => {
            let (values, dim, labels) = read_embeddings(file)?;
            explorer_html(&Exploration {
                title: &file.display().to_string(),
                set: LabelledEmbeddings {
                    embeddings: &values,
                    dim,
                    labels: &labels,
                    class_names: &[],
                    paths: &[],
                    images: None,
                },
                threshold: None,
            })
            .with_context(|| format!("{}", file.display()))?
        }
        (None, None) => bail!("give --model or --embeddings"),
    };
    siamese_data::write_atomic(&a.out, page.as_bytes())?;
    eprintln!("wrote {} ({} bytes)", a.out.display(), page.len());
    Ok(())
}

fn split(data: &siamese_data::Dataset, name: SplitName) -> &siamese_data::ImageSet {
    match name {
        SplitName::Train => &data.train,
        SplitName::Validation => &data.validation,
        SplitName::Test => &data.test,
    }
}

pub(crate) fn index(a: IndexArgs) -> Result<()> {
    let (tower, ckpt) = load_model(&a.model)?;
    let (data, paths) = data_and_paths_for(&a.source, &ckpt)?;
    let part = match a.split {
        SplitName::Train => 0,
        SplitName::Validation => 1,
        SplitName::Test => 2,
    };
    let set = [&data.train, &data.validation, &data.test][part];
    let values = embed_set(&tower, set, &siamese_data::Batcher::new(device()?))?;
    let paths: Vec<String> = paths
        .map(|p| {
            p[part]
                .iter()
                .map(|path| path.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    let gallery = Gallery::new(
        tower.embedding_dim(),
        values,
        set.labels().to_vec(),
        data.spec.class_names.clone(),
        paths,
        ckpt.fingerprint()?,
    )
    .with_context(|| format!("the model {} gives no valid gallery", a.model.display()))?;
    siamese_data::write_atomic(&a.out, &gallery.to_bytes()?)?;
    eprintln!(
        "wrote {} embeddings of dimension {} ({} {:?} split) to {}",
        gallery.len(),
        gallery.dim(),
        data.spec.name,
        a.split,
        a.out.display()
    );
    Ok(())
}

pub(crate) fn search(a: SearchArgs) -> Result<()> {
    let size = std::fs::metadata(&a.gallery)
        .with_context(|| format!("reading {}", a.gallery.display()))?
        .len();
    if size > MAX_GALLERY_BYTES {
        bail!(
            "{}: {size} bytes, more than a gallery may hold ({MAX_GALLERY_BYTES})",
            a.gallery.display()
        );
    }
    let bytes =
        std::fs::read(&a.gallery).with_context(|| format!("reading {}", a.gallery.display()))?;
    let gallery = Gallery::from_bytes(&bytes, &a.gallery)?;
    drop(bytes);
    let (tower, ckpt) = load_model(&a.model)?;
    gallery
        .check_model(&ckpt.fingerprint()?)
        .with_context(|| format!("{} and {}", a.gallery.display(), a.model.display()))?;
    let dim = tower.embedding_dim();
    let queries = embed_files(&tower, &ckpt, &a.queries)?;
    let mut json = Vec::new();
    for (file, query) in a.queries.iter().zip(queries.chunks_exact(dim)) {
        let hits = gallery.search(query, a.k)?;
        if a.json {
            let items: Vec<_> = hits
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "index": h.index,
                        "distance": h.distance,
                        "label": gallery.label(h.index),
                        "class": gallery.class_name(gallery.label(h.index)),
                        "path": gallery.path(h.index),
                    })
                })
                .collect();
            json.push(
                serde_json::json!({ "query": file.display().to_string(), "neighbours": items }),
            );
            continue;
        }
        use crate::text::{number, terminal_safe};
        println!("{}:", terminal_safe(&file.display().to_string()));
        for (rank, h) in hits.iter().enumerate() {
            let label = gallery.label(h.index);
            let path = gallery
                .path(h.index)
                .map(|p| format!("  {}", terminal_safe(p)))
                .unwrap_or_default();
            println!(
                "  {:>2}. item {:>7}  distance {}  class {}{path}",
                rank + 1,
                h.index,
                number(f64::from(h.distance)),
                terminal_safe(gallery.class_name(label))
            );
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(json));
    }
    Ok(())
}
