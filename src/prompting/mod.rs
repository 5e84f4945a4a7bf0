//! Stage 4, prompts for SAM: interactive box/point prompts and their encoding, CLIP saliency
//! (gradient-free) and the MedCLIP-SAM rules that turn it into boxes and points, connected
//! components, ground-truth oracle prompts for scoring, and text prompt banks. Builds on the
//! models and the mask type; knows nothing of pipelines, outputs or links.

pub mod autoprompt;
pub mod bank;
pub mod components;
pub mod oracle;
pub mod prompt;
pub mod saliency;
