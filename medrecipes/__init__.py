"""Training recipes for medical and radar imaging on fastai, with fused SSIM and CBAM kernels

Modules:

- `medrecipes.callbacks`: The fastai callbacks every recipe shares: the switch between the training and the validation loss, a collapse warning, one fit-only base, one collector of each epoch's scalars feeding the CSV, TensorBoard, W&B and text logs, a divergence guard, mixed precision and gradient accumulation for every recipe, best and final checkpoints.
- `medrecipes.checkpoint`: What a recipe's checkpoint holds, in one place: the two kinds (classifier and SAR codec), the keys each must have, how to tell them apart, reading one with its keys checked, and where its settings are stored.
- `medrecipes.classification_metrics`: Per-class recall while training, the report of an evaluated split (confusion matrix, per-class precision, recall and F1, macro F1, ROC-AUC), and calibration: NLL, Brier score, ECE, reliability bins and temperature scaling.
- `medrecipes.classify`: `create_classifier`, `classifier_learner` and `ClassifierLearner`: what the X-ray and image-folder recipes share: a timm body with a fastai head (so `freeze`/`fine_tune` work), class-weighted training, `checkpoints/best.pt` and `latest.pt`, one `evaluate(split, which)`, one metrics writer, and `load_classifier` / `predict` for new images.
- `medrecipes.cli`: `medrecipes train xray|sar|folder`, `train-all xray`, `compare sar`, `export-onnx`, `predict`, `synth btxrd|sar|digits`.
- `medrecipes.codec`: A real bitrate: the quantised latent of a SAR autoencoder entropy-coded into a checked file, and the learned codec beside JPEG2000 at the same bits per pixel.
- `medrecipes.config`: One config system for Python and the command line: Hydra structured configs (dataclasses in a `ConfigStore`) hold every default; YAML groups in `medrecipes/configs/` are the user-editable choices.
- `medrecipes.core`: Seeding, devices, configs with command-line overrides, atomic files and checkpoints that load without pickled code.
- `medrecipes.data.cache`: The classifier loaders' stored images, decoded once into a memory-mapped uint8 file per data set and stored size: invalidated by the source files, the stored size and the preprocessing, written atomically, built by one rank under DDP.
- `medrecipes.data.folder`: `FolderDataLoaders.from_folder`: any classification set laid out as `train/<class>/*`, `valid/<class>/*` and optionally `test/<class>/*`, checked before training starts.
- `medrecipes.data.images`: One reader for the classifier recipes' images: files, `Path`s, bytes, PIL images and arrays, turned upright by their EXIF orientation, with 16-bit, 32-bit and float images windowed to 8 bits instead of saturated.
- `medrecipes.data.sar`: Read single-band SAR images (`.npy`, GeoTIFF, PNG), check them, convert to dB, clip and scale to [0, 1] with parameters fitted on the training images only, and serve random training patches and fixed validation tiles as fastai `DataLoaders`.
- `medrecipes.data.sar_io`: Read single-band SAR images (`.npy`, GeoTIFF, PNG) whole or by windows, check them, and convert them to dB, clip and scale them to [0, 1] with parameters fitted on training images: what the SAR codec and the model loader need, without fastai.
- `medrecipes.data.xray`: Read the BTXRD metadata sheet, check it, split it (stratified or by center) and build fastai `DataLoaders` for radiographs.
- `medrecipes.distributed`: Every recipe trains with `DistributedDataParallel` when launched by `torchrun` or `accelerate launch`: sharded data, averaged gradients, metrics over the whole validation set, files written by rank 0, exact resume. One context manager; a no-op in a single process.
- `medrecipes.export`: `export_onnx(checkpoint)`: a classifier checkpoint to one ONNX model, a SAR checkpoint to an encoder and a decoder model, each with a dynamic batch axis, validated by `onnx.checker` and checked against PyTorch with ONNX Runtime.
- `medrecipes.folder`: `folder_learner` / `train_folder`: any timm classifier on a `train/<class>`, `valid/<class>` (and `test/<class>`) data set, with class weights, mixed precision, gradient clipping and accumulation, exact resume, confusion matrices and CSV / TensorBoard / Weights & Biases tracking.
- `medrecipes.image_stats`: PSNR, the equivalent number of looks, the ENL ratio and the EPI as plain torch functions, one value per image: what the codec needs to record and score a scene, without fastai.
- `medrecipes.kernels.cbam.function`: CBAM's forward and backward as `torch.library` custom ops (`medrecipes::cbam_forward`, `medrecipes::cbam_backward`) with fake implementations and autograd: one differentiable op that drives any backend's six passes (the op table, `ops.py`) and does the small steps in PyTorch, and that `torch.compile` and `torch.export` trace without breaking the graph.
- `medrecipes.kernels.cbam.ops`: The CBAM op table: the six passes over the feature map a fast backend implements, and the C++ backend.
- `medrecipes.kernels.cbam.reference`: CBAM in plain PyTorch: the oracle of the whole module (`cbam_reference`, autograd, the path exporters trace) and of each of the six fused passes (`ReferenceCBAMOps`, from the formulas, accumulated in float64).
- `medrecipes.kernels.cbam.triton`: Triton backend of the fused CBAM passes: the six ops of the CBAM backend interface.
- `medrecipes.kernels.ssim.ops`: The SSIM op table: the two functions a fast backend implements, and the C++ backend.
- `medrecipes.kernels.ssim.reference`: SSIM in plain PyTorch with autograd: the oracle every backend is tested against, and the path exporters trace.
- `medrecipes.kernels.ssim.triton`: Fused SSIM forward and hand-written backward in Triton.
- `medrecipes.losses`: Class weights from the training labels, and a cross-entropy weighted in training and plain in validation, exact under data-parallel training.
- `medrecipes.metrics`: PSNR, SSIM, ENL ratio and EPI, as functions and as fastai metrics over the whole validation set.
- `medrecipes.models.entropy`: A learned prior over the quantised latent, its integer coding tables, and a range coder that turns the latent into real bytes.
- `medrecipes.models.sar`: Four convolutional autoencoders with one interface: an encoder that compresses a 1×H×W image 16-fold into a latent map, a decoder that rebuilds it through a sigmoid.
- `medrecipes.predict`: `medrecipes predict CKPT INPUTS...`: a trained checkpoint on new files. Classifiers write `predictions.csv` (calibrated probabilities, optional test-time augmentation and Grad-CAM overlays), SAR codecs write codec files or reconstructions; unreadable inputs go to `errors.csv`.
- `medrecipes.resume`: A run killed at any point continues from its last checkpoint and ends exactly as if it had never stopped.
- `medrecipes.sar`: A 16x autoencoder codec for speckled radar images: loss 0.7 MSE + 0.3 (1 - SSIM), PSNR / SSIM / ENL ratio / EPI, TensorBoard, exact resume, out-of-memory retries.
- `medrecipes.sar_experiments`: Experiments with the SAR recipe: the four variants compared on the same data and seed, over several seeds, a latent-channels × bits sweep, and rate–distortion curves beside JPEG2000 with Bjøntegaard deltas.
- `medrecipes.synth.digits`: A seeded image-folder classification set: handwritten-looking digits as PNG files in `<split>/<digit>/` folders
- `medrecipes.synth.sar`: Seeded synthetic SAR intensity scenes, single-look or Sentinel-1-like, written as `.npy` images in `train/`, `valid/` and `test/` folders
- `medrecipes.synth.xray`: A small, seeded, synthetic bone-tumour X-ray set written in the exact layout of the public BTXRD release
- `medrecipes.xray`: `xray_learner`: EfficientNet-B0 on BTXRD radiographs with class-weighted training, per-class recall, a Malignant recall-collapse warning, early stopping, `best.pt`/`latest.pt` checkpoints and a held-out test evaluation, on the shared classifier core."""

__version__ = "0.1.0"
