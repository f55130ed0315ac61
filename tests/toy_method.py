"""A test-only method with everything FAVAE and IGD need from the trainer: an autoencoder and
an adversarial critic with two optimizers, a periodic host-side hook whose result is state (a
centre re-estimated from the whole training set, like IGD's EM step), and a frozen pretrained
sub-network that the loss reads but nothing trains or checkpoints (like FAVAE's VGG16)."""
from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqjax import train as train_lib
from vqjax.inference import to_unit_range
from vqjax.optimizers import make_optimizer

SIZE, CODE = 8, 4


class AutoEncoder(nn.Module):
  @nn.compact
  def __call__(self, x):  # x [B,SIZE,SIZE,1] -> (codes [B,CODE], reconstructions like x)
    codes = nn.Dense(CODE, name="encoder")(x.reshape(x.shape[0], -1))
    out = nn.sigmoid(nn.Dense(SIZE * SIZE, name="decoder")(nn.relu(codes)))
    return codes, out.reshape(x.shape)


class Critic(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.tanh(nn.Dense(8)(x.reshape(x.shape[0], -1))))[:, 0]


def frozen_features(frozen, x):
  """The 'pretrained' network: a fixed linear map of the image, [B,...] -> [B,8]."""
  return x.reshape(x.shape[0], -1) @ frozen["w"]


def frozen_variables(seed=7):
  w = (np.random.default_rng(seed).standard_normal((SIZE * SIZE, 8)) / SIZE).astype(np.float32)
  return train_lib.FrozenVariables({"w": w}, {"source": f"toy seed {seed}",
                                               "sha256": f"toy-{seed}"})


@flax.struct.dataclass
class ToyState:
  step: jnp.ndarray
  ae: dict
  critic: dict
  ae_opt: optax.OptState
  critic_opt: optax.OptState
  centre: jnp.ndarray  # [CODE]: set by the periodic hook, read by the loss


def toy_config(**train):
  config = ml_collections.ConfigDict({
      "seed": 3,
      "train": {"batch_size": 4, "num_steps": 8, "learning_rate": 1e-2, "log_every": 1,
                "checkpoint_every": 2, "max_checkpoints": 10, "hook_every": 3},
      # Two optimizers: the critic's with IGD's betas, polynomial decay and weight decay.
      "critic_optimizer": {"optimizer": "adamw", "learning_rate": 1e-2, "b1": 0.0, "b2": 0.9,
                           "weight_decay": 1e-4, "schedule": "polynomial", "decay_power": 0.9}})
  config.train.update(train)
  return config


def toy_program(config, frozen=None) -> train_lib.TrainProgram:
  ae, critic = AutoEncoder(), Critic()
  num_steps = config.train.num_steps
  ae_tx = make_optimizer(config.train, num_steps)
  critic_tx = make_optimizer(config.critic_optimizer, num_steps)
  frozen = frozen or frozen_variables()

  def init(rng, example):
    x = to_unit_range(example)
    ae_params = ae.init(jax.random.fold_in(rng, 0), x)["params"]
    critic_params = critic.init(jax.random.fold_in(rng, 1), x)["params"]
    return ToyState(step=jnp.zeros((), jnp.int32), ae=ae_params, critic=critic_params,
                    ae_opt=ae_tx.init(ae_params), critic_opt=critic_tx.init(critic_params),
                    centre=jnp.zeros((CODE,), jnp.float32))

  def step(state, batch, root_key, frozen_vars):
    x = to_unit_range(batch)
    rng = jax.random.fold_in(root_key, state.step)
    alpha = jax.random.uniform(rng, (x.shape[0],), maxval=0.5)

    def ae_loss(params):
      codes, recon = ae.apply({"params": params}, x)
      feature_loss = jnp.mean(jnp.square(frozen_features(frozen_vars, x)
                                         - frozen_features(frozen_vars, recon)))
      fool = jnp.mean(jnp.square(critic.apply({"params": state.critic}, recon)))
      svdd = jnp.mean(jnp.sum(jnp.square(codes - state.centre), -1))
      loss = jnp.mean(jnp.square(recon - x)) + 0.1 * feature_loss + 0.1 * fool + 0.01 * svdd
      return loss, recon

    (loss, recon), ae_grads = jax.value_and_grad(ae_loss, has_aux=True)(state.ae)
    recon = jax.lax.stop_gradient(recon)
    mixed = alpha[:, None, None, None] * recon + (1 - alpha[:, None, None, None]) * x

    def critic_loss(params):
      return (jnp.mean(jnp.square(critic.apply({"params": params}, mixed) - alpha))
              + jnp.mean(jnp.square(critic.apply({"params": params}, x))))

    c_loss, critic_grads = jax.value_and_grad(critic_loss)(state.critic)
    ae_updates, ae_opt = ae_tx.update(ae_grads, state.ae_opt, state.ae)
    critic_updates, critic_opt = critic_tx.update(critic_grads, state.critic_opt, state.critic)
    new = state.replace(step=state.step + 1, ae=optax.apply_updates(state.ae, ae_updates),
                        critic=optax.apply_updates(state.critic, critic_updates),
                        ae_opt=ae_opt, critic_opt=critic_opt)
    return new, {"loss": loss, "critic_loss": c_loss}

  @jax.jit
  def mean_code(ae_params, images):
    return jnp.mean(ae.apply({"params": ae_params}, to_unit_range(images))[0], axis=0)

  def recentre(state, frozen_vars, data):
    """The EM-like hook: centre = mean code of every training image under the current AE."""
    return state.replace(centre=mean_code(state.ae, jnp.asarray(data)))

  return train_lib.TrainProgram(
      init=init, step=step, frozen=frozen,
      variables=lambda state, frozen_vars: {"ae": state.ae, "critic": state.critic,
                                            "centre": state.centre, "frozen": frozen_vars},
      hooks=(train_lib.PeriodicHook(config.train.hook_every, recentre, "recentre"),),
      progress=(("critic_loss", "critic"),))


def toy_images(n=12, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  images = [0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(1, 2) * xx + yy) + rng.uniform(0, 6))
            for _ in range(n)]
  return (np.asarray(images)[..., None] * 255).astype(np.uint8)
