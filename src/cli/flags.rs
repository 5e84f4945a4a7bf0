//! Every flag of every subcommand, declared once (clap derive); `--help` is generated from
//! these declarations. Option groups shared by several subcommands ([`ModelArgs`],
//! [`TextArgs`]) are flattened into them, so a subcommand cannot forget one.
//!
//! Values are kept as the text the user typed and parsed by the subcommands, which check
//! them with messages that name the flag and the value (`--fps 'x' is not valid`); clap
//! checks which flags exist, which take values and how often they may appear. A later
//! occurrence of a one-value flag overrides an earlier one (`run` appends the command line's
//! flags to a board profile's).

use clap::{Args, Parser, Subcommand};

pub const ENVIRONMENT: &str = "\
environment: SONOMASK_LOG=debug|info|warn|error (default info: per-stage timings on stderr),
             SONOMASK_MODELS=DIR (default ./models)";

#[derive(Parser, Debug)]
#[command(
    name = "sonomask",
    version,
    about = "sonomask: edge runtime for prompted medical image segmentation (MobileSAM on tract)",
    after_help = ENVIRONMENT,
    subcommand_value_name = "COMMAND"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Segment(SegmentArgs),
    PromptBank(BankArgs),
    Stream(StreamArgs),
    Listen(ListenArgs),
    Run(RunArgs),
    Eval(EvalArgs),
    Bench(BenchArgs),
    Doctor(DoctorArgs),
    /// Print the version
    Version,
}

/// Which models, in which precision, on how many threads.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Model directory with manifest.toml (default: $SONOMASK_MODELS, else ./models)
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    pub models: Option<String>,
    /// fp32, int8, or auto (per model, from the table `bench --table --save` measured on this
    /// CPU class; without one, int8 where the CPU has a fast int8 dot product)
    #[arg(long, value_name = "fp32|int8|auto", allow_hyphen_values = true)]
    pub precision: Option<String>,
    /// The decoder's precision when it differs from --precision
    #[arg(long, value_name = "fp32|int8|auto", allow_hyphen_values = true)]
    pub decoder_precision: Option<String>,
    /// Matrix-product threads (default: every core up to 4)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub threads: Option<String>,
}

/// The text-prompted pipelines' options (MedCLIP-SAM and SaLIP), shared by segment and eval.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Text prompts (MedCLIP-SAM, SaLIP)")]
pub struct TextArgs {
    /// A description; several --text are a prompt ensemble (averaged, normalised)
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub text: Vec<String>,
    /// Descriptions: one per line, a SaLIP JSON {"class": [..]} (--class picks one), or a
    /// MedCLIP-SAMv2 per-image JSON {"image.png": ".."}
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub prompt_file: Option<String>,
    /// The class of a prompt file or bank
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    pub class: Option<String>,
    /// Precomputed embeddings from `sonomask prompt-bank` (bound to the text model)
    #[arg(long, value_name = "BANK.json", allow_hyphen_values = true)]
    pub bank: Option<String>,
    /// medclip-sam (default) or salip
    #[arg(long, value_name = "medclip-sam|salip", allow_hyphen_values = true)]
    pub pipeline: Option<String>,
    /// similarity (one CLIP pass, default) or scorecam (K masked CLIP passes)
    #[arg(long, value_name = "similarity|scorecam", allow_hyphen_values = true)]
    pub saliency: Option<String>,
    /// Masked CLIP passes of scorecam
    #[arg(long, value_name = "K", allow_hyphen_values = true)]
    pub scorecam_k: Option<String>,
    /// v1: threshold 0.5, largest component, one box; v2 (default): k-means split, top-K
    /// components, one box around them; v2-boxes: one box per component (top 2: lungs);
    /// v2-points: N positive points
    #[arg(
        long,
        value_name = "v1|v2|v2-boxes|v2-points",
        allow_hyphen_values = true
    )]
    pub prompt_rule: Option<String>,
    /// Override the binarisation: otsu, kmeans or a fixed value in [0, 1]
    #[arg(long, value_name = "otsu|kmeans|F", allow_hyphen_values = true)]
    pub threshold: Option<String>,
    /// Components kept (MedCLIP-SAM) or masks retrieved (SaLIP; 1, 2 for lungs)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub top_k: Option<String>,
    /// Positive points of the v2-points rule
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub points: Option<String>,
    /// CLIP's precision (default: --precision's)
    #[arg(long, value_name = "fp32|int8|auto", allow_hyphen_values = true)]
    pub clip_precision: Option<String>,
    /// Write the saliency map as an image
    #[arg(long, value_name = "saliency.png", allow_hyphen_values = true)]
    pub saliency_out: Option<String>,
    /// SaLIP: everything mode's grid, N x N (default 16)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub points_per_side: Option<String>,
    /// SaLIP: keep masks with predicted IoU >= F (0.88)
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub pred_iou: Option<String>,
    /// SaLIP: keep masks with stability >= F (0.95)
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub stability: Option<String>,
    /// SaLIP: box NMS threshold (0.7)
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub nms: Option<String>,
    /// SaLIP: masked (outside the mask blacked out, default) or box (the plain box)
    #[arg(long, value_name = "masked|box", allow_hyphen_values = true)]
    pub crop: Option<String>,
    /// SaLIP: no candidate above this CLIP score gives an empty mask and a status saying why
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub score_floor: Option<String>,
    /// SaLIP: every candidate drawn with its CLIP score (* = retrieved)
    #[arg(long, value_name = "candidates.png", allow_hyphen_values = true)]
    pub candidates_out: Option<String>,
    /// SaLIP: SAM's crop layers (off by default); layer 1 runs 4 overlapping crops, each one
    /// more encoder pass and grid (layer 2: 16 more)
    #[arg(long, value_name = "0|1|2", allow_hyphen_values = true)]
    pub crop_layers: Option<String>,
    /// SaLIP: prompt each grid cell with a point (official) or with boxes (15% and 30% of the
    /// frame, single-mask output: for box-trained models such as LiteMedSAM)
    #[arg(long, value_name = "points|boxes", allow_hyphen_values = true)]
    pub grid: Option<String>,
    /// SaLIP: coarse to fine (approximate, off by default): decode the (N/2)^2 grid, then the
    /// N x N grid only in the fraction F of coarse cells with the highest predicted IoU
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub refine: Option<String>,
    /// SaLIP: native (default; the grid's prompts share the frame's decoder work, fp32) or
    /// tract (one decoder graph run per prompt, the reference)
    #[arg(long, value_name = "native|tract", allow_hyphen_values = true)]
    pub grid_decoder: Option<String>,
}

/// Biometry of each mask.
#[derive(Args, Debug, Clone, Default)]
pub struct MeasureArgs {
    /// hc: the head's ellipse on the skull's outer border and its circumference; lesion:
    /// longest diameter, the perpendicular one, area (docs/BIOMETRY.md)
    #[arg(long, value_name = "hc|lesion|none", allow_hyphen_values = true)]
    pub measure: Option<String>,
    /// Pixel size in mm for the measurements; overrides a DICOM's spacing (else pixels)
    #[arg(long, value_name = "MM", allow_hyphen_values = true)]
    pub pixel_size: Option<String>,
}

/// Cine mode: the encoder re-runs only when the picture changed.
#[derive(Args, Debug, Clone, Default)]
pub struct CineArgs {
    /// Re-encode when the mean luma change exceeds F (0..1, default 0.01)
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub cine_threshold: Option<String>,
    /// Re-encode at least every N frames (default 10)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub reencode_every: Option<String>,
    /// Run the encoder on every frame (the reference for the speed-up)
    #[arg(long)]
    pub no_reuse: bool,
}

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sonomask segment",
    args_override_self = true,
    about = "Segment an image (PNG/JPEG) with SAM: box/point prompts, or a text prompt (MedCLIP-SAM, SaLIP)",
    long_about = "Segment an image (PNG/JPEG) with SAM. Each --box is one object (the masks of several boxes \
are ORed); --point adds foreground (label 1, default) or background (label 0) clicks to every box, or \
prompts on its own. Coordinates are pixels of the original image.\n\n\
A multi-frame source (a multi-frame DICOM, a directory of images/DICOM files, or raw:-, raw:FILE, \
raw:tcp:HOST:PORT in the raw frame format of src/input/source.rs) runs in cine mode: one prompt for \
every frame, the encoder re-run only when the frame changed. -o is then a directory (default cine_out) \
that receives mask_NNNNN.png per frame, frames.jsonl, overlay.png (animated PNG) and strip.png.\n\n\
Text prompts (--text, --prompt-file, --bank): CLIP saliency of the text over the frame, a box (or points) \
from it by the prompt rule, then SAM (MedCLIP-SAM, gradient-free); nothing salient: one whole-frame box, \
reported as \"prompt_fallback\". --pipeline salip: SAM everything mode on one encoder pass, each mask's \
crop scored by CLIP against the text, the top --top-k retrieved and SAM re-prompted with their boxes."
)]
pub struct SegmentArgs {
    /// IMAGE, or CINE.dcm|DIR|raw:SRC for cine mode
    #[arg(value_name = "IMAGE")]
    pub image: Vec<String>,
    /// A box prompt in pixels; each box is one object
    #[arg(long = "box", value_name = "x0,y0,x1,y1", allow_hyphen_values = true)]
    pub boxes: Vec<String>,
    /// A click: label 1 foreground (default), 0 background
    #[arg(long, value_name = "x,y[,label]")]
    pub point: Vec<String>,
    /// Mask PNG (0/255), default mask.png (cine mode: a directory, default cine_out)
    #[arg(long, short = 'o', value_name = "PATH", allow_hyphen_values = true)]
    pub out: Option<String>,
    /// Image with the mask tinted and outlined, and the box drawn
    #[arg(long, value_name = "overlay.png", allow_hyphen_values = true)]
    pub overlay: Option<String>,
    /// Print a JSON summary (areas, IoU predictions, per-stage timings) on stdout
    #[arg(long)]
    pub json: bool,
    /// Score the mask against a ground-truth mask of the image (Dice, IoU)
    #[arg(long, value_name = "MASK", allow_hyphen_values = true)]
    pub gt: Option<String>,
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Cine mode: blend logits W*new + (1-W)*previous when masks overlap (IoU >= 0.5); 1 turns
    /// smoothing off (default 0.6)
    #[arg(long, value_name = "W", allow_hyphen_values = true)]
    pub smooth: Option<String>,
    /// Cine mode: stop after N frames
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_frames: Option<String>,
    #[command(flatten)]
    pub cine: CineArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub text: TextArgs,
}

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sonomask prompt-bank",
    args_override_self = true,
    about = "Precompute text embeddings on a host",
    long_about = "Precompute text embeddings on a host: each class of a SaLIP-style JSON file (or the \
lines of a text file, or the --text descriptions) becomes one ensemble embedding, written to a small JSON \
file bound to the text model's sha256. `segment --bank` refuses a bank from another text model."
)]
pub struct BankArgs {
    /// Descriptions: a SaLIP JSON {"class": [..]}, a per-image JSON, or one per line
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub prompt_file: Option<String>,
    /// A description (several: one ensemble)
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub text: Vec<String>,
    /// The class name of --text or of a text file's lines (default prompt)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub name: Option<String>,
    /// The bank file (default bank.json)
    #[arg(
        long,
        short = 'o',
        value_name = "bank.json",
        allow_hyphen_values = true
    )]
    pub out: Option<String>,
    /// Model directory (default: $SONOMASK_MODELS, else ./models)
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    pub models: Option<String>,
    /// The text model's precision
    #[arg(long, value_name = "fp32|int8|auto", allow_hyphen_values = true)]
    pub clip_precision: Option<String>,
    /// The text model's precision when --clip-precision is not given
    #[arg(long, value_name = "fp32|int8|auto", allow_hyphen_values = true)]
    pub precision: Option<String>,
}

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sonomask stream",
    args_override_self = true,
    about = "Device side of the link: segment frames, stream masks (docs/PROTOCOL.md)",
    long_about = "Device side of the link (protocol: docs/PROTOCOL.md). Each frame of the source (an image, \
a directory of PNG/JPEG/DICOM in natural order, a DICOM cine, or a raw frame stream raw:-, raw:FILE, \
raw:tcp:HOST:PORT, raw:serial:PATH[@BAUD]) is segmented with SAM in cine mode (the encoder re-runs only \
when the picture changed; --no-reuse runs it on every frame) and its mask sent to the sink; the host can \
replace the prompt at any time with a Prompt message. Serial and TCP links that fail are reopened every \
250 ms; masks produced meanwhile are dropped and counted in Status. A summary goes to stderr."
)]
pub struct StreamArgs {
    /// Not taken: the source is --source
    #[arg(value_name = "ARG", hide = true)]
    pub positional: Vec<String>,
    /// IMAGE, DIR, CINE.dcm, or raw:SRC (raw:-, raw:FILE, raw:tcp:HOST:PORT, raw:serial:PATH[@BAUD])
    #[arg(long, value_name = "SRC", allow_hyphen_values = true)]
    pub source: Option<String>,
    /// serial:PATH[@BAUD] (UART, USB CDC-ACM; default 921600 baud), tcp:HOST:PORT (connects to
    /// `sonomask listen tcp:...`), stdout, or file:PATH
    #[arg(long, value_name = "ENDPOINT", allow_hyphen_values = true)]
    pub sink: Option<String>,
    /// The prompt until the host sends one (one box: one object per frame)
    #[arg(long = "box", value_name = "x0,y0,x1,y1", allow_hyphen_values = true)]
    pub boxes: Vec<String>,
    /// A click of the prompt; without --box/--point/--text frames wait for a host prompt
    #[arg(long, value_name = "x,y[,label]")]
    pub point: Vec<String>,
    /// A text prompt instead (MedCLIP-SAM, or SaLIP with --pipeline salip); needs CLIP
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub text: Option<String>,
    /// The text prompt's pipeline
    #[arg(long, value_name = "medclip-sam|salip", allow_hyphen_values = true)]
    pub pipeline: Option<String>,
    /// Skip loading CLIP (less memory; box/point prompts only)
    #[arg(long)]
    pub no_text: bool,
    /// The source holds masks (nonzero = foreground): send them as they are, no models
    #[arg(long)]
    pub masks: bool,
    /// Pace the source at F frames per second (default: as fast as it runs)
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub fps: Option<String>,
    /// Repeat the source until --count frames
    #[arg(long = "loop")]
    pub looping: bool,
    /// Stop after N frames
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub count: Option<String>,
    /// Masks waiting for the link before the oldest is dropped (default 2)
    #[arg(long, value_name = "K", allow_hyphen_values = true)]
    pub queue: Option<String>,
    /// The board named in Hello (default: the device tree's model, else the architecture)
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    pub board: Option<String>,
    /// Send each mask's biometry as a Measure message after it (default: from the text prompt:
    /// a head gets hc, a lesion/tumour/mass/nodule/cyst lesion; else none)
    #[arg(long, value_name = "hc|lesion|none", allow_hyphen_values = true)]
    pub measure: Option<String>,
    /// Pixel size in mm for the measurements; overrides a DICOM's spacing
    #[arg(long, value_name = "MM", allow_hyphen_values = true)]
    pub pixel_size: Option<String>,
    #[command(flatten)]
    pub cine: CineArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sonomask listen",
    args_override_self = true,
    about = "Host side of the link: receive masks, send prompts (docs/PROTOCOL.md)",
    long_about = "Host side of the link (protocol: docs/PROTOCOL.md). ENDPOINT is serial:PATH[@BAUD], \
tcp:HOST:PORT (listens; the device connects), stdin, or a recorded stream file. Writes \
DIR/mask_FRAME_OBJECT.png (0/255) for every mask that arrives intact and DIR/messages.jsonl (also on \
stdout unless --quiet) with one JSON line per message or event."
)]
pub struct ListenArgs {
    /// serial:PATH[@BAUD], tcp:HOST:PORT, stdin, or a recording
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: Vec<String>,
    /// Output directory
    #[arg(long, short = 'o', value_name = "DIR", allow_hyphen_values = true)]
    pub out: Option<String>,
    /// Send a box Prompt (id 1) each time the link opens
    #[arg(long = "box", value_name = "x0,y0,x1,y1", allow_hyphen_values = true)]
    pub boxes: Option<String>,
    /// A click of that Prompt
    #[arg(long, value_name = "x,y[,label]")]
    pub point: Vec<String>,
    /// Send a text Prompt
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub text: Option<String>,
    /// The Prompt's pipeline (default interactive; medclip-sam or salip with --text)
    #[arg(
        long,
        value_name = "interactive|medclip-sam|salip",
        allow_hyphen_values = true
    )]
    pub pipeline: Option<String>,
    /// Send a Prompt that stops the device segmenting
    #[arg(long)]
    pub clear: bool,
    /// Stop after N masks (exit 1 if the timeout comes first)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub count: Option<String>,
    /// Stop after S seconds (default: until the stream ends)
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    pub timeout: Option<String>,
    /// Stop when nothing arrived for S seconds after the first byte
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    pub idle: Option<String>,
    /// Do not echo messages.jsonl on stdout
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sonomask run",
    about = "Run `sonomask stream` configured by a board profile (the service entry point)",
    long_about = "Runs `sonomask stream` configured by a board profile (boards/NAME.toml; --boards or \
SONOMASK_BOARDS picks the directory, default ./boards then /opt/sonomask/boards). Stream options after \
the board override the profile's, e.g. --sink tcp:10.0.0.2:7000 or --box 1,2,3,4 (`sonomask stream \
--help` lists them)."
)]
pub struct RunArgs {
    /// The board profile: a name in the boards directory or a TOML file
    #[arg(long, value_name = "NAME|FILE.toml", allow_hyphen_values = true)]
    pub board: Option<String>,
    /// The boards directory
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    pub boards: Option<String>,
    /// Print the stream command it would run and exit
    #[arg(long)]
    pub dry_run: bool,
    /// Stream options overriding the profile's
    #[arg(
        value_name = "STREAM OPTIONS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub stream: Vec<String>,
}

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sonomask eval",
    args_override_self = true,
    about = "Score a pipeline on a labelled set (pairs.csv): Dice, IoU, NSD",
    long_about = "Segments every image of a labelled set and scores it against the union of its \
ground-truth masks: Dice, IoU and NSD (normalised surface distance) per image, mean and std over the \
images with a non-empty ground truth; images with an empty ground truth are reported apart (correct when \
the prediction is empty too). Writes DIR/eval.csv and DIR/eval.json (default DIR eval_out). A failing \
image is recorded with its error and the run goes on. The prompt is a text (--text, --prompt-file, \
--bank; segment's text options apply) or one drawn from the ground truth (--prompt)."
)]
pub struct EvalArgs {
    /// The labelled set
    #[arg(long, value_name = "DATA/pairs.csv", allow_hyphen_values = true)]
    pub pairs: Option<String>,
    /// oracle-box: the ground truth's bounding box (the SAM stage alone); jittered-box: each
    /// side moved by up to --jitter of the box size, seeded; oracle-point: one click at the
    /// ground truth's deepest pixel; everything-bound: everything mode scored by its best
    /// candidate (the Dice a perfect CLIP retrieval would reach)
    #[arg(
        long,
        value_name = "oracle-box|jittered-box|oracle-point|everything-bound",
        allow_hyphen_values = true
    )]
    pub prompt: Option<String>,
    /// Grow the oracle box by the fraction F of its size (0.1 = +10%), clamped to the image
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub loose: Option<String>,
    /// jittered-box: the largest move of a side, as a fraction of the box size (default 0.1)
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub jitter: Option<String>,
    /// jittered-box: the seed (default 0), with the image's row, so runs repeat
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub seed: Option<String>,
    /// Score the first N images
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub limit: Option<String>,
    /// Output directory (default eval_out)
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    pub out_dir: Option<String>,
    /// NSD tolerance in pixels (default 2)
    #[arg(long, value_name = "PX", allow_hyphen_values = true)]
    pub nsd_tol: Option<String>,
    /// hc: head circumference per image (predicted, ground truth's, and the reference HC when
    /// --pixel-size-csv has it); lesion: diameters and area, predicted against ground truth's
    #[arg(long, value_name = "hc|lesion", allow_hyphen_values = true)]
    pub measure: Option<String>,
    /// Pixel size per image: filename,pixel size(mm)[,head circumference (mm)]
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    pub pixel_size_csv: Option<String>,
    /// One pixel size for every image; without either, pixels (said so)
    #[arg(long, value_name = "MM", allow_hyphen_values = true)]
    pub pixel_size: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub text: TextArgs,
}

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sonomask bench",
    args_override_self = true,
    about = "Time preprocessing, the encoder and the box-prompted decoder on one image (JSON)",
    long_about = "Loads the models once, then times preprocessing, the encoder and the box-prompted \
decoder over --runs runs (after --warmup runs). Prints one JSON object (milliseconds)."
)]
pub struct BenchArgs {
    /// The image
    #[arg(value_name = "IMAGE")]
    pub image: Vec<String>,
    /// The box prompt (required unless --table)
    #[arg(long = "box", value_name = "x0,y0,x1,y1", allow_hyphen_values = true)]
    pub boxes: Option<String>,
    /// Timed runs
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub runs: Option<String>,
    /// Untimed runs first
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub warmup: Option<String>,
    /// On the board itself: every model in every precision the manifest has, medians in one
    /// run, int8 against fp32, and the faster precision per model (markdown, then JSON)
    #[arg(long)]
    pub table: bool,
    /// With --table: record the faster precision per model for this CPU class and thread count
    /// in MODELS/precision_table.json, which --precision auto then follows
    #[arg(long)]
    pub save: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sonomask doctor",
    args_override_self = true,
    about = "CPU features, kernels, precision, models and serial ports",
    long_about = "Prints CPU features, the kernels and model precision sonomask would use, the model \
manifest status (files present, sha256, synthetic or real weights), the serial ports present, and \
warnings. Exit status 0 even with warnings; 1 only if the check itself failed."
)]
pub struct DoctorArgs {
    /// Model directory (default: $SONOMASK_MODELS, else ./models)
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    pub models: Option<String>,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn declarations_are_consistent() {
        // clap's own check of the declarations: duplicate names, bad settings, conflicts.
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_that_loads_sam_takes_the_model_options() {
        let cli = Cli::command();
        for name in ["segment", "stream", "eval", "bench"] {
            let sub = cli.find_subcommand(name).unwrap();
            for flag in ["models", "precision", "decoder-precision", "threads"] {
                assert!(
                    sub.get_arguments().any(|a| a.get_long() == Some(flag)),
                    "{name} lacks --{flag}"
                );
            }
        }
        let segment = cli.find_subcommand("segment").unwrap();
        let eval = cli.find_subcommand("eval").unwrap();
        let text = <TextArgs as clap::Args>::augment_args(clap::Command::new("text"));
        for a in text.get_arguments() {
            let long = a.get_long().unwrap();
            for sub in [segment, eval] {
                assert!(sub.get_arguments().any(|b| b.get_long() == Some(long)));
            }
        }
    }

    #[test]
    fn a_later_value_overrides_an_earlier_one() {
        // `run` appends the command line's flags to the board profile's.
        let a = StreamArgs::try_parse_from(["s", "--sink", "stdout", "--sink", "tcp:h:1"]).unwrap();
        assert_eq!(a.sink.as_deref(), Some("tcp:h:1"));
        let a = SegmentArgs::try_parse_from(["s", "i.png", "--box", "1,2,3,4", "--box", "5,6,7,8"])
            .unwrap();
        assert_eq!(a.boxes, ["1,2,3,4", "5,6,7,8"], "repeatable flags collect");
        let a = SegmentArgs::try_parse_from(["s", "i.png", "--pixel-size", "-1"]).unwrap();
        assert_eq!(
            a.measure.pixel_size.as_deref(),
            Some("-1"),
            "values may start with '-'"
        );
    }
}
