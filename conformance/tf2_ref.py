"""An optional reference implementation made of TensorFlow's own ops (extra ``[tf2]``).

``simclr-xb conformance --backends torch,mlx,tf2`` adds it to the comparison: on the SAME
inputs and sampled parameters as the other implementations it runs what the official
google-research/simclr tf2 code runs (data_util.py, objective.py, lars_optimizer.py):

* ``tf.image.resize(crop, BICUBIC)`` of ``tf.image.crop_to_bounding_box`` (antialias off, the
  default the official code uses), ``tf.image.flip_left_right``;
* ``tf.image.adjust_contrast`` / ``adjust_saturation`` / ``adjust_hue``,
  ``tf.image.rgb_to_grayscale``; brightness is ``x * b`` with TF ops, which is what
  data_util.random_brightness does for impl 'simclrv2' (``tf.image.adjust_brightness`` is the
  ADDITIVE delta of impl 'simclrv1', not used by the tf2 recipe); a clip after each op as
  color_jitter_rand does;
* the blur as two ``tf.nn.depthwise_conv2d`` passes with padding 'SAME';
* the loss and one LARS step written here with TF ops from the official semantics (not copied):
  l2-normalise, split into the two views, logits ab/aa/ba/bb with the self-similarities
  pushed down by 1e9, softmax cross-entropy per direction, ``reduce_mean(loss_a + loss_b)``;
  LARS with classic momentum, decay and trust ratio on the non-excluded parameters.

Only the cases this file implements run it (``supports``): the tf2-recipe ops, the
recipe-independent brightness and hue, the full tf2 pipeline, NT-Xent (both reductions) and
LARS. TensorFlow's image kernels compute in float32, so image cases run in float32 only; the
loss and LARS run in both dtypes. The crop SAMPLER cannot be compared value by value (another
random stream): tests/test_tf2_reference.py compares its distribution with a two-sample test.
"""
from __future__ import annotations

import os

import numpy as np

from simclr_xb.augment import BRIGHTNESS, CONTRAST, HUE, SATURATION

NAME = "tf2"
IMAGE_FNS = ("resized_crop", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
             "grayscale", "gaussian_blur", "color_jitter", "augment")
LOSS_FNS = ("nt_xent", "nt_xent_grad", "nt_xent_chunked", "nt_xent_chunked_grad", "lars_step")
LARGE_NUM = 1e9  # objective.py: added to the self-similarity logits' mask


def load():
    """-> the ``tensorflow`` module, or raise ImportError with the install hint."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(f"tensorflow is not installed ({e}); install it with: "
                          "pip install 'simclr-xb[tf2]'") from e
    return tf


def version() -> str:
    return load().__version__


def supports(case, dtype: str) -> bool:
    """Whether this reference implements ``case`` (a conformance Case) in ``dtype``."""
    fn = case.fn if isinstance(case.fn, str) else None
    recipe = case.kwargs.get("recipe", "torchvision")
    if fn in LOSS_FNS:
        return True
    if fn not in IMAGE_FNS or dtype != "float32":
        return False
    if fn == "augment":
        return case.name.startswith("augment.tf2.")
    return recipe == "tf2" or fn in ("adjust_brightness", "adjust_hue")


# --------------------------------------------------------------------------- images
def _clip(tf, x):
    return tf.clip_by_value(x, 0.0, 1.0)


def _crop_resize(tf, image, box, size):
    t, l, h, w = (int(v) for v in box)
    crop = tf.image.crop_to_bounding_box(image, t, l, h, w)
    return tf.image.resize(crop[None], [size, size], method=tf.image.ResizeMethod.BICUBIC)[0]


def _blur_one(tf, image, sigma, kernel_size):
    """data_util.gaussian_blur's semantics: radius = kernel_size // 2, a normalised Gaussian
    exp(-t^2 / (2 sigma^2)) over t = -r..r, horizontal then vertical depthwise 'SAME' passes."""
    r = kernel_size // 2
    t = tf.cast(tf.range(-r, r + 1), image.dtype)
    k = tf.exp(-tf.square(t) / (2.0 * tf.square(tf.cast(sigma, image.dtype))))
    k = k / tf.reduce_sum(k)
    c = image.shape[-1]
    kh = tf.tile(tf.reshape(k, [1, 2 * r + 1, 1, 1]), [1, 1, c, 1])
    kv = tf.tile(tf.reshape(k, [2 * r + 1, 1, 1, 1]), [1, 1, c, 1])
    out = tf.nn.depthwise_conv2d(image[None], kh, strides=[1, 1, 1, 1], padding="SAME")
    out = tf.nn.depthwise_conv2d(out, kv, strides=[1, 1, 1, 1], padding="SAME")
    return out[0]


def _jitter_op(tf, op, x, f):
    if op == BRIGHTNESS:
        return x * tf.cast(f, x.dtype)  # random_brightness, impl 'simclrv2'
    if op == CONTRAST:
        return tf.image.adjust_contrast(x, f)
    if op == SATURATION:
        return tf.image.adjust_saturation(x, f)
    return tf.image.adjust_hue(x, f)


def _factors(params, i):
    return {BRIGHTNESS: params.brightness[i], CONTRAST: params.contrast[i],
            SATURATION: params.saturation[i], HUE: params.hue[i]}


def _jitter_one(tf, x, params, i):
    f = _factors(params, i)
    for op in params.jitter_order[i]:
        x = _clip(tf, _jitter_op(tf, int(op), x, float(f[int(op)])))
    return x


def _gray_one(tf, x):
    return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3])


def _per_view(tf, x, fn):
    return np.stack([fn(tf.constant(x[i]), i).numpy() for i in range(len(x))])


def _image_call(tf, fn, args, kw):
    if fn == "resized_crop":
        x, crop, size = args
        return _per_view(tf, np.asarray(x, np.float32), lambda v, i: _crop_resize(tf, v, crop[i], int(size)))
    if fn in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        x, f = args
        op = {"adjust_brightness": BRIGHTNESS, "adjust_contrast": CONTRAST,
              "adjust_saturation": SATURATION, "adjust_hue": HUE}[fn]
        return _per_view(tf, np.asarray(x, np.float32),
                         lambda v, i: _clip(tf, _jitter_op(tf, op, v, float(f[i]))))
    if fn == "grayscale":
        x, mask = args
        return _per_view(tf, np.asarray(x, np.float32), lambda v, i: _gray_one(tf, v) if mask[i] else v)
    if fn == "gaussian_blur":
        x, sigma, mask, k = args
        return _per_view(tf, np.asarray(x, np.float32),
                         lambda v, i: _clip(tf, _blur_one(tf, v, float(sigma[i]), int(k))) if mask[i] else v)
    if fn == "color_jitter":
        x, params = args
        return _per_view(tf, np.asarray(x, np.float32),
                         lambda v, i: _jitter_one(tf, v, params, i) if params.jitter[i] else v)
    if fn == "augment":
        images_u8, params, cfg = args

        def view(v, i):  # data_util.preprocess_for_train + the model's batch_random_blur
            x = _crop_resize(tf, tf.image.convert_image_dtype(v, tf.float32), params.crop[i], cfg.image_size)
            if params.flip[i]:
                x = tf.image.flip_left_right(x)
            if params.jitter[i]:
                x = _jitter_one(tf, x, params, i)
            if params.grayscale[i]:
                x = _gray_one(tf, x)
            x = _clip(tf, x)
            if params.blur[i] and cfg.blur_kernel_size > 1:
                x = _clip(tf, _blur_one(tf, x, float(params.blur_sigma[i]), cfg.blur_kernel_size))
            return x
        return _per_view(tf, np.asarray(images_u8), view)
    raise NotImplementedError(fn)


# --------------------------------------------------------------------------- loss and LARS
def contrastive_loss(tf, z, tau: float, reduction: str = "tf2"):
    """objective.add_contrastive_loss's semantics on one replica, z (2N, d) = [view 1; view 2]."""
    h = tf.math.l2_normalize(z, -1)
    h1, h2 = tf.split(h, 2, 0)
    n = tf.shape(h1)[0]
    labels = tf.one_hot(tf.range(n), n * 2, dtype=z.dtype)
    masks = tf.one_hot(tf.range(n), n, dtype=z.dtype)
    aa = tf.matmul(h1, h1, transpose_b=True) / tau - masks * LARGE_NUM
    bb = tf.matmul(h2, h2, transpose_b=True) / tau - masks * LARGE_NUM
    ab = tf.matmul(h1, h2, transpose_b=True) / tau
    ba = tf.matmul(h2, h1, transpose_b=True) / tau
    loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([ab, aa], 1))
    loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([ba, bb], 1))
    loss = tf.reduce_mean(loss_a + loss_b)
    return loss if reduction == "tf2" else loss / 2.0


def lars_update(tf, w, g, v, lr, cfg, excluded: bool):
    """lars_optimizer.py's classic-momentum update of one variable -> (new w, new v)."""
    if not excluded and cfg.weight_decay:
        g = g + cfg.weight_decay * w
    trust = tf.constant(1.0, w.dtype)
    if not excluded:
        wn, gn = tf.norm(w, ord=2), tf.norm(g, ord=2)
        trust = tf.where(wn > 0, tf.where(gn > 0, cfg.eta * wn / gn, 1.0), 1.0)
    scaled = lr * trust
    new_v = cfg.momentum * v + scaled * g
    update = cfg.momentum * new_v + scaled * g if cfg.nesterov else new_v
    return w - update, new_v


def _loss_call(tf, fn, args, kw, dtype):
    reduction = kw.get("reduction", "mean")
    tdt = tf.float64 if dtype == "float64" else tf.float32
    if fn in ("nt_xent", "nt_xent_chunked", "nt_xent_grad", "nt_xent_chunked_grad"):
        z, tau = args[0], float(args[1])  # TF has no chunked form: the chunked cases check the value
        zt = tf.constant(np.asarray(z), tdt)
        if fn.endswith("_grad"):
            with tf.GradientTape() as tape:
                tape.watch(zt)
                loss = contrastive_loss(tf, zt, tau, reduction)
            return tape.gradient(loss, zt).numpy()
        return float(contrastive_loss(tf, zt, tau, reduction).numpy())
    if fn == "lars_step":
        params, grads, momenta, lr, cfg, excluded = args
        new_p, new_v = {}, {}
        for name in params:
            w, v = lars_update(tf, tf.constant(params[name], tdt), tf.constant(grads[name], tdt),
                               tf.constant(momenta[name], tdt), float(lr), cfg, bool(excluded[name]))
            new_p[name], new_v[name] = w.numpy(), v.numpy()
        return new_p, new_v
    raise NotImplementedError(fn)


def caller():
    """-> call(fn, *args, dtype, **kw) in the runner's convention (raises ImportError without TF)."""
    tf = load()

    def call(fn, *args, dtype, **kw):
        if fn in LOSS_FNS:
            return _loss_call(tf, fn, args, kw, dtype)
        if kw.get("recipe", "tf2") != "tf2" and fn not in ("adjust_brightness", "adjust_hue"):
            raise NotImplementedError(f"the tf2 reference implements the tf2 recipe only, not {kw}")
        return _image_call(tf, fn, args, kw)

    call.supports = supports
    return call
