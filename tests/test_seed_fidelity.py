"""Seed fidelity: vaejax against the two seed articles, recomputed by hand in NumPy float64.

The forward passes are rebuilt from the Flax params the way a reader checks the articles' networks
(TF's 'SAME' padding rule, TF1's conv2d_transpose as the adjoint of its conv2d, NHWC flattening), on
random weights *and biases*, and compared with the float32 Flax model; the batch loss is rebuilt on
top of them; two training steps are rebuilt as Adam.

Adam. vaejax trains with `optax.adam(lr)` (vaejax.training): eps = 1e-8 is added to the
bias-corrected sqrt(v_hat). TF1's `tf.train.AdamOptimizer` (seed 000; eps 1e-8) and Keras 2's `Adam`
(seed 003, `optimizer='adam'`; eps = K.epsilon() = 1e-7) add an "epsilon hat" to the uncorrected
sqrt(v_t) and fold both corrections into lr_t = lr sqrt(1 - b2^t) / (1 - b1^t). That is optax's
form with a step-dependent eps_t = eps_hat / sqrt(1 - b2^t): 31.6 eps_hat at step 1, 1.6 eps_hat
after one conv_vae epoch (469 steps), eps_hat in the limit. The forms agree wherever
sqrt(v_hat) >> eps_t and differ for parameters whose gradients are not that large. Measured from
the seeds' initialisation on real MNIST (the bounds the last two tests assert):
- conv_vae against TF1: the first update differs by about 8% of its norm (per parameter the gap
  exceeds 1% where 0 < |g| < 3e-5, 14% of the parameters); for gradients of that size the gap is under 1%
  after one epoch (469 steps), under 1e-3 after five, and nothing in the limit.
- dense_ae against Keras: Keras averages the BCE over the 784 pixels where vaejax sums it, so Keras'
  gradients are 784 times smaller and its eps is, in vaejax's units, 784e-7 / sqrt(1 - b2^t):
  2.5e-3 at step 1, 7.8e-5 in the limit (8000 times optax's 1e-8). The first update differs by
  about 40% of its norm and about 13% remains in the limit: vaejax's dense_ae does not train with
  Keras' Adam.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import batch_gradient, batch_loss
from jax.flatten_util import ravel_pytree

from vaejax.config import MODEL_DEFAULTS
from vaejax.models import AutoEncoder, build_model, conv_transpose, decode, encode, init_params
from vaejax.steps import LossSpec, TrainState, make_loss, make_train_step, zero_sums

LATENT_DIM = 2  # both seeds
PIXELS = 784
B1, B2 = 0.9, 0.999  # Adam's decay rates: optax, TF1 and Keras agree
OPTAX_EPS, TF1_EPS, KERAS_EPS = 1e-8, 1e-8, 1e-7


# ---- the seed networks in NumPy float64 ----

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's 'SAME': ceil(size / stride) outputs; the odd pixel of padding goes after (bottom/right)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def correlate(x: np.ndarray, kernel: np.ndarray, stride: int, pads: tuple[int, int]) -> np.ndarray:
    """Cross-correlation of NHWC `x` with a (kh, kw, in, out) kernel, `pads` before/after on both axes."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), pads, pads, (0, 0)))
    out_h = (padded.shape[1] - kh) // stride + 1
    out_w = (padded.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for a in range(kh):
        for b in range(kw):
            window = padded[:, a:a + stride * out_h:stride, b:b + stride * out_w:stride]
            out += np.einsum("nhwi,io->nhwo", window, kernel[a, b])
    return out


def conv2d_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """TF1 `tf.layers.conv2d(padding='same')` (square images and kernels)."""
    return correlate(x, kernel, stride, same_padding(x.shape[1], kernel.shape[0], stride)) + bias


def conv2d_transpose_same(x: np.ndarray, filters: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """TF1 `tf.layers.conv2d_transpose(strides=1, padding='same')`: the adjoint of conv2d_same (its
    gradient with respect to the input), each input pixel scattered through the kernel. `filters` is
    (kh, kw, out, in), as TF stores them."""
    kh, kw = filters.shape[:2]
    batch, height, width, _ = x.shape
    top, _ = same_padding(height, kh, 1)
    scattered = np.zeros((batch, height + kh - 1, width + kw - 1, filters.shape[2]))
    for a in range(kh):
        for b in range(kw):
            scattered[:, a:a + height, b:b + width] += np.einsum("nhwi,oi->nhwo", x, filters[a, b])
    return scattered[:, top:top + height, top:top + width] + bias


def tf_filters(flax_kernel: np.ndarray) -> np.ndarray:
    """The TF1 conv2d_transpose filters that compute what Flax's ConvTranspose computes with `flax_kernel`."""
    return flax_kernel[::-1, ::-1].swapaxes(2, 3)


def relu(x):
    return np.maximum(x, 0.0)


def softplus(x):
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def dense(x, layer):
    return x @ layer["kernel"] + layer["bias"]


def conv_vae_encode(params, images):
    """Seed 000's `encoder`: three convs (strides 2, 2, 1) + ReLU, flatten NHWC, mean, softplus std."""
    p = params["encoder"]
    x = images
    for index, stride in enumerate((2, 2, 1)):
        layer = p[f"Conv_{index}"]
        x = relu(conv2d_same(x, layer["kernel"], layer["bias"], stride))
    x = x.reshape(x.shape[0], -1)  # tf.layers.flatten of NHWC: channels fastest
    return dense(x, p["mean"]), softplus(dense(x, p["std"]))


def conv_vae_decode(params, z):
    """Seed 000's `decoder`: 2 x Dense(49) + ReLU, 7x7x1, 3 x conv2d_transpose + ReLU, flatten, two
    Dense(784) with nothing between them (the seed's sigmoid is the loss's business)."""
    p = params["decoder"]
    x = relu(dense(relu(dense(z, p["Dense_0"])), p["Dense_1"]))
    side = int(np.sqrt(x.shape[1]))
    x = x.reshape(x.shape[0], side, side, 1)
    for index in range(3):
        layer = p[f"ConvTranspose_{index}"]
        x = relu(conv2d_transpose_same(x, tf_filters(layer["kernel"]), layer["bias"]))
    return dense(dense(x.reshape(x.shape[0], -1), p["Dense_2"]), p["Dense_3"])


def dense_ae_encode(params, images):
    """Seed 003's encoder: 784 -> 32 ReLU -> 2 ReLU (the code); no std."""
    p = params["encoder"]
    return relu(dense(relu(dense(images.reshape(images.shape[0], -1), p["Dense_0"])), p["Dense_1"])), None


def dense_ae_decode(params, z):
    """Seed 003's decoder: 2 -> 32 ReLU -> 784 logits (the seed's sigmoid is in the loss)."""
    p = params["decoder"]
    return dense(relu(dense(z, p["Dense_0"])), p["Dense_1"])


REFERENCE = {"conv_vae": (conv_vae_encode, conv_vae_decode), "dense_ae": (dense_ae_encode, dense_ae_decode)}


# ---- helpers ----

def draw_params(model: AutoEncoder, draw) -> dict:
    """Float32 params of the model's shapes, each leaf `draw(shape)`."""
    shapes = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
    return jax.tree.map(lambda leaf: draw(leaf.shape).astype(np.float32), shapes)


def random_params(model: AutoEncoder, seed: int) -> dict:
    """Kernels N(0, 2 / fan_in), biases N(0, 0.3^2): a dropped or misplaced bias changes the output
    as much as a wrong kernel."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        return rng.normal(0.0, 0.3 if len(shape) == 1 else np.sqrt(2.0 / np.prod(shape[:-1])), shape)

    return draw_params(model, draw)


def seed_init_params(model: AutoEncoder, seed: int) -> dict:
    """The seeds' initialisation (TF1's and Keras' defaults: glorot-uniform kernels, zero biases)."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        if len(shape) == 1:
            return np.zeros(shape)
        limit = np.sqrt(6.0 / (np.prod(shape[:-1]) + np.prod(shape[:-2]) * shape[-1]))  # fan_in + fan_out
        return rng.uniform(-limit, limit, shape)

    return draw_params(model, draw)


def float64(tree):
    return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), tree)


def assert_close(actual, expected):
    """float32 against float64: relative 1e-4, or 1e-5 of the largest expected magnitude."""
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


# ---- the forward passes ----

def test_flax_conv_transpose_is_tf1_conv2d_transpose_with_the_kernel_flipped():
    """At stride 1, TF1's conv2d_transpose('same') is the adjoint of conv2d('same'), which pads a
    4-wide kernel 1 before and 2 after: a cross-correlation padded 2 before and 1 after, with the
    kernel flipped in space and its channel axes swapped. Flax's ConvTranspose (transpose_kernel
    False) is that same correlation with its kernel used as stored. So the two layers compute the
    same family of functions, and a kernel moves between them by `tf_filters`; loading a TF1
    checkpoint's kernel unflipped would be wrong, which the last assertion shows."""
    rng = np.random.default_rng(0)
    layer = conv_transpose(5)
    inputs = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    params = {"kernel": rng.normal(size=(4, 4, 3, 5)).astype(np.float32),
              "bias": rng.normal(size=(5,)).astype(np.float32)}
    outputs = layer.apply({"params": params}, inputs)
    kernel, bias, x = float64(params["kernel"]), float64(params["bias"]), float64(inputs)
    assert_close(outputs, correlate(x, kernel, 1, (2, 1)) + bias)
    assert_close(outputs, conv2d_transpose_same(x, tf_filters(kernel), bias))
    unflipped = conv2d_transpose_same(x, kernel.swapaxes(2, 3), bias)
    assert np.abs(np.asarray(outputs) - unflipped).max() > 0.1 * np.abs(unflipped).max()


@pytest.mark.parametrize("name", ["conv_vae", "dense_ae"])
def test_forward_pass_is_the_seed_network(name):
    """encode, decode and the whole model (z = mean + std * eps for the VAE) against NumPy float64."""
    model = build_model(name, LATENT_DIM)
    params = random_params(model, seed=1)
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(3, 28, 28, 1)).astype(np.float32)
    z = rng.normal(size=(3, LATENT_DIM)).astype(np.float32)
    key = jax.random.key(3)

    @jax.jit
    def flax_outputs(params, images, z, key):
        return encode(model, params, images), decode(model, params, z), model.apply({"params": params}, images, key)

    (mean, std), logits, (full_logits, full_mean, full_std) = flax_outputs(params, images, z, key)
    hand_encode, hand_decode = REFERENCE[name]
    params64 = float64(params)
    hand_mean, hand_std = hand_encode(params64, float64(images))
    assert_close(mean, hand_mean)
    assert_close(full_mean, hand_mean)
    assert_close(logits, hand_decode(params64, float64(z)))
    if hand_std is None:
        assert std is None and full_std is None
        hand_z = hand_mean
    else:
        assert_close(std, hand_std)
        assert_close(full_std, hand_std)
        hand_z = hand_mean + hand_std * float64(jax.random.normal(key, hand_mean.shape))  # as `reparameterize`
    assert_close(full_logits, hand_decode(params64, hand_z))


# ---- the loss ----

@pytest.mark.parametrize("name", ["conv_vae", "dense_ae"])
def test_batch_loss_is_the_hand_computed_weighted_mean(name):
    """BCE from logits summed over pixels, plus the Gaussian KL for the VAE, averaged over the rows
    whose weight is 1: the last row is padding and must not count."""
    model = build_model(name, LATENT_DIM)
    params = random_params(model, seed=4)
    rng = np.random.default_rng(5)
    images_uint8 = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    labels = np.zeros(4, np.int32)
    weights = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
    key = jax.random.key(6)
    _, terms = jax.jit(functools.partial(batch_loss, model))(params, images_uint8, labels, weights, key)

    hand_encode, hand_decode = REFERENCE[name]
    params64 = float64(params)
    pixels = images_uint8.reshape(4, PIXELS) / 255.0
    mean, std = hand_encode(params64, pixels.reshape(4, 28, 28, 1))
    # batch_loss hands `key` itself to the model when it does not binarize
    z = mean if std is None else mean + std * float64(jax.random.normal(key, mean.shape))
    logits = hand_decode(params64, z)
    bce = (np.maximum(logits, 0.0) - pixels * logits + np.log1p(np.exp(-np.abs(logits)))).sum(axis=1)
    kl = np.zeros(4) if std is None else 0.5 * (mean**2 + std**2 - 1.0 - np.log(std**2)).sum(axis=1)
    real = weights == 1.0
    for term, per_image in [("bce", bce), ("kl", kl), ("loss", bce + kl)]:
        np.testing.assert_allclose(terms[term], per_image[real].mean(), rtol=1e-5, atol=1e-5)
    if std is None:
        assert float(terms["kl"]) == 0.0


# ---- the optimizer ----

def adam_updates(gradients, learning_rate: float, eps, epsilon_hat: bool = False) -> list[np.ndarray]:
    """Each step's Adam update in float64. Optax's form (`epsilon_hat=False`): m_hat / (sqrt(v_hat) +
    eps); `eps` may be one value per step. TF1's and Keras' form: lr_t * m / (sqrt(v) + eps)."""
    first = second = 0.0
    updates = []
    step_eps = np.broadcast_to(eps, len(gradients))
    for t, gradient in enumerate(gradients, start=1):
        first = B1 * first + (1 - B1) * gradient
        second = B2 * second + (1 - B2) * gradient**2
        if epsilon_hat:
            lr_t = learning_rate * np.sqrt(1 - B2**t) / (1 - B1**t)
            updates.append(-lr_t * first / (np.sqrt(second) + step_eps[t - 1]))
        else:
            updates.append(-learning_rate * (first / (1 - B1**t)) / (np.sqrt(second / (1 - B2**t)) + step_eps[t - 1]))
    return updates


def eps_in_optax_form(epsilon_hat: float, t):
    """The optax eps that makes optax's update at step `t` TF1's / Keras' update with `epsilon_hat`."""
    return epsilon_hat / np.sqrt(1 - B2 ** np.asarray(t, np.float64))


def relative_gap(update: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(update - reference) / np.linalg.norm(reference))


def two_training_steps(name: str, train_images, train_labels) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two vaejax train steps (`make_train_step` with `optax.adam(lr)`, as vaejax.training builds it)
    from the seeds' initialisation on real MNIST at the model's default batch size and learning rate.
    Returns the flat float64 params before and after each step, and the gradient each step used."""
    model = build_model(name, LATENT_DIM)
    batch_size, learning_rate = MODEL_DEFAULTS[name]["batch_size"], MODEL_DEFAULTS[name]["learning_rate"]
    optimizer = optax.adam(learning_rate)
    params = seed_init_params(model, seed=7)
    state = TrainState(params, optimizer.init(params), jax.random.key(0), jnp.int32(0), jnp.int32(0), zero_sums(2))
    images, labels = jnp.asarray(train_images[:2 * batch_size]), jnp.asarray(train_labels[:2 * batch_size])
    order, step_root = jnp.arange(2 * batch_size), jax.random.key(8)
    train_step = jax.jit(make_train_step(make_loss(model, LossSpec()), optimizer, batch_size))
    gradient = jax.jit(lambda params, images, labels, key: batch_gradient(
        model, params, images, labels, jnp.ones(batch_size), key)[0])

    def flat(tree):
        return np.asarray(ravel_pytree(tree)[0], np.float64)

    trajectory, gradients = [flat(state.params)], []
    for step in range(2):
        batch = slice(step * batch_size, (step + 1) * batch_size)
        step_key = jax.random.fold_in(step_root, step)  # the key train_step draws for this step
        gradients.append(flat(gradient(state.params, images[batch], labels[batch], step_key)))
        state = train_step(state, images, labels, order, step_root)
        assert int(state.step) == step + 1
        trajectory.append(flat(state.params))
    return trajectory, gradients


@pytest.fixture(scope="module")
def training_steps(mnist):
    return functools.cache(lambda name: two_training_steps(name, mnist.train_images, mnist.train_labels))


@pytest.mark.parametrize("name", ["conv_vae", "dense_ae"])
def test_train_step_is_optax_form_adam(training_steps, name):
    """Two steps, so that the bias corrections (b1, b2) count, not only the first step's g / |g|."""
    trajectory, gradients = training_steps(name)
    expected = adam_updates(gradients, MODEL_DEFAULTS[name]["learning_rate"], OPTAX_EPS)
    for before, after, update in zip(trajectory[:-1], trajectory[1:], expected, strict=True):
        # float32 params round each step's sum to a unit in the last place of the params
        last_place = np.spacing(np.float32(np.abs(after).max()))
        np.testing.assert_allclose(after - before, update, rtol=1e-5, atol=4 * last_place)


def test_epsilon_hat_adam_is_optax_adam_with_a_step_dependent_eps(training_steps):
    """The claim the quantitative tests below rest on, checked on real gradients: TF1's / Keras' form
    with eps_hat is optax's with eps_t = eps_hat / sqrt(1 - b2^t); `optax.adam` with that eps as a
    schedule (through `optax.inject_hyperparams`) would train exactly as TF1 and Keras do."""
    _, gradients = training_steps("dense_ae")
    learning_rate = MODEL_DEFAULTS["dense_ae"]["learning_rate"]
    for epsilon_hat in (TF1_EPS, KERAS_EPS):
        tf_form = adam_updates(gradients, learning_rate, epsilon_hat, epsilon_hat=True)
        optax_form = adam_updates(gradients, learning_rate, eps_in_optax_form(epsilon_hat, [1, 2]))
        for tf_update, optax_update in zip(tf_form, optax_form, strict=True):
            np.testing.assert_allclose(tf_update, optax_update, rtol=1e-12, atol=0)

        optimizer = optax.inject_hyperparams(optax.adam)(
            learning_rate=learning_rate,
            eps=lambda count, epsilon_hat=epsilon_hat: epsilon_hat / jnp.sqrt(1 - B2 ** (count + 1.0)))
        state = optimizer.init(jnp.zeros(gradients[0].shape, jnp.float32))
        for gradient, tf_update in zip(gradients, tf_form, strict=True):
            update, state = optimizer.update(jnp.asarray(gradient, jnp.float32), state)
            np.testing.assert_allclose(update, tf_update, rtol=1e-5, atol=1e-6 * learning_rate)


def test_conv_vae_first_update_differs_from_tf1_adam_by_a_few_percent(training_steps):
    """Seed 000: TF1's AdamOptimizer (eps_hat 1e-8) against vaejax's actual first update."""
    trajectory, gradients = training_steps("conv_vae")
    learning_rate = MODEL_DEFAULTS["conv_vae"]["learning_rate"]
    vaejax_update = trajectory[1] - trajectory[0]
    tf1_update = adam_updates(gradients[:1], learning_rate, TF1_EPS, epsilon_hat=True)[0]
    assert 0.02 < relative_gap(tf1_update, vaejax_update) < 0.15
    # The first step's gradient held for t steps: TF1's update at step t is optax's with eps_t, and
    # optax's is the same at every step (m_hat = g, v_hat = g^2).
    optax_update = adam_updates(gradients[:1], learning_rate, OPTAX_EPS)[0]
    epoch = 469  # 60000 images in batches of 128
    for steps, bound in [(epoch, 1e-2), (5 * epoch, 1e-3)]:
        later = adam_updates(gradients[:1], learning_rate, eps_in_optax_form(TF1_EPS, steps))[0]
        assert relative_gap(later, optax_update) < bound


def test_dense_ae_update_differs_from_keras_adam_on_the_per_pixel_loss(training_steps):
    """Seed 003: Keras' Adam (eps_hat 1e-7) on Keras' `binary_crossentropy`, the mean over pixels:
    its gradient is vaejax's (the sum over pixels) divided by 784."""
    trajectory, gradients = training_steps("dense_ae")
    learning_rate = MODEL_DEFAULTS["dense_ae"]["learning_rate"]
    vaejax_update = trajectory[1] - trajectory[0]
    keras_update = adam_updates([gradients[0] / PIXELS], learning_rate, KERAS_EPS, epsilon_hat=True)[0]
    assert 0.2 < relative_gap(keras_update, vaejax_update) < 0.8
    # in the limit Keras' eps is 784 * 1e-7 in vaejax's units, ~8000 times optax's 1e-8
    optax_update = adam_updates(gradients[:1], learning_rate, OPTAX_EPS)[0]
    limit = adam_updates(gradients[:1], learning_rate, PIXELS * KERAS_EPS)[0]
    assert relative_gap(limit, optax_update) > 0.05
