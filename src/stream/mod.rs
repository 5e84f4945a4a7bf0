//! Device-side streaming: masks flow from the pipeline into a newest-wins queue and out over
//! the link; prompts flow back from the host.

pub mod device;
pub mod queue;

pub use device::{DeviceInfo, DeviceLink, LinkOptions, LinkSummary, MaskJob};
