//! Device-side streaming: masks flow from the pipeline into a newest-wins queue and out over
//! the link; prompts flow back from the host.

pub mod device;
pub mod queue;

pub use device::{DeviceInfo, DeviceLink, LinkOptions, LinkSummary, MaskJob};

use crate::output::measure::{HcSource, Measurements, Spacing, Target, Unit};
use crate::wire::message::{MeasureMsg, WireCaliper, measure_flags};

/// A mask's measurements as the Measure message that follows it on the wire.
pub fn measure_msg(
    frame_id: u32,
    object: u8,
    target: Target,
    m: &Measurements,
    spacing: Option<Spacing>,
) -> MeasureMsg {
    let caliper = |c: &crate::output::measure::Caliper| WireCaliper {
        x0: c.from.0 as f32,
        y0: c.from.1 as f32,
        x1: c.to.0 as f32,
        y1: c.to.1 as f32,
        length: c.length as f32,
    };
    let mut flags = 0;
    if m.ellipse.is_some() {
        flags |= measure_flags::ELLIPSE;
    }
    if m.hc.is_some() && m.hc_source == HcSource::SkullOuterBorder {
        flags |= measure_flags::HC_ON_SKULL;
    }
    let e = m.ellipse;
    MeasureMsg {
        frame_id,
        object,
        target: if target == Target::Hc { 1 } else { 2 },
        unit: (m.unit == Unit::Mm) as u8,
        flags,
        area: m.area as f32,
        perimeter: m.perimeter as f32,
        hc: if target == Target::Hc {
            m.hc.map_or(f32::NAN, |v| v as f32)
        } else {
            f32::NAN
        },
        ellipse: e.map_or([f32::NAN; 5], |e| {
            [
                e.cx as f32,
                e.cy as f32,
                e.semi_major as f32,
                e.semi_minor as f32,
                e.angle_deg as f32,
            ]
        }),
        long_axis: caliper(&m.long_axis),
        short_axis: caliper(&m.short_axis),
        spacing_mm: spacing.map_or([f32::NAN; 2], |s| [s.x_mm as f32, s.y_mm as f32]),
    }
}
