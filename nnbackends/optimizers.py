"""Optimizers with the nnfs book's argument names, defaults and decay schedule.

``learning_rate`` is a number or a schedule (``nnbackends.schedules``);
``decay`` is the shorthand for ``InverseTimeDecay(learning_rate, decay)``,
the rate ``learning_rate / (1 + decay * iterations)``. ``lr_scale`` multiplies
the schedule's rate (``ReduceLROnPlateau`` lowers it). With a constant rate each update equals the ``torch.optim`` update of the same name
(SGD with momentum and no dampening, Adagrad, RMSprop with alpha=rho, Adam).
The trainer calls ``pre_update()``, then ``update(param)`` for every parameter,
then ``post_update()``; state arrays live in ``param.state`` and are written in place.
"""
from __future__ import annotations

from .schedules import Constant, InverseTimeDecay, Schedule, schedule_from_config
from .validation import check_choice, check_fraction, check_learning_rate, check_nonnegative_float


class Optimizer:
    name: str
    #: Per-parameter state arrays, in the order the update kernel takes them.
    state_names: tuple[str, ...] = ()
    #: The update a fused step runs: the kernel table's name, or ``sgd_momentum_update`` for the
    #: table's ``sgd_update`` with a velocity (fused steps run the two as separate kernels).
    update_kernel: str
    #: The attributes the update kernel takes after the learning rate, in its order.
    hyperparameters: tuple[str, ...] = ()

    def __init__(self, learning_rate, decay=0.0):
        self.decay = check_nonnegative_float("decay", decay)
        self.learning_rate = learning_rate
        self.lr_scale = 1.0
        self.iterations = 0
        self.current_learning_rate = self.schedule(0)

    @property
    def learning_rate(self):
        """A number, or the schedule given as the learning rate."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, rate):
        if isinstance(rate, Schedule):
            if self.decay:
                raise ValueError("decay= is the shorthand for schedules.InverseTimeDecay; pass a schedule as "
                                 "learning_rate or a decay, not both.")
            self.schedule = rate
        else:
            rate = check_learning_rate("learning_rate", rate)
            self.schedule = InverseTimeDecay(rate, self.decay) if self.decay else Constant(rate)
        self._learning_rate = rate

    def build(self, backend, params):
        """Bind to ``backend`` and allocate zeroed state for every parameter."""
        self.backend = backend
        for p in params:
            p.state = {s: backend.zeros(p.value.shape, p.value.dtype) for s in self.state_names}
        return self

    def pre_update(self):
        self.current_learning_rate = self.schedule(self.iterations) * self.lr_scale

    def rates(self, count):
        """The learning rates of the next ``count`` steps (what ``pre_update`` sets before each)."""
        return self.schedule.rates(self.iterations, count) * self.lr_scale

    def training_state(self) -> dict:
        """What resuming needs besides the state arrays (saved with the model)."""
        return {"iterations": self.iterations, "lr_scale": self.lr_scale}

    def restore_training_state(self, state: dict):
        self.iterations, self.lr_scale = int(state["iterations"]), float(state["lr_scale"])

    def update(self, param):
        raise NotImplementedError

    def post_update(self):
        self.iterations += 1

    def config(self) -> dict:
        raise NotImplementedError

    def _rate_config(self):
        """``learning_rate`` as saved: a number, or a schedule's config."""
        rate = self.learning_rate
        return rate.config() if isinstance(rate, Schedule) else rate

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, learning_rate=1.0, decay=0.0, momentum=0.0):
        super().__init__(learning_rate, decay)
        self.momentum = check_fraction("momentum", momentum)
        self.state_names = ("velocity",) if self.momentum else ()
        self.update_kernel = "sgd_momentum_update" if self.momentum else "sgd_update"
        self.hyperparameters = ("momentum",) if self.momentum else ()

    def update(self, param):
        self.backend.sgd_update(param.value, param.grad, self.current_learning_rate,
                                self.momentum, param.state.get("velocity"))

    def config(self):
        return {"name": self.name, "learning_rate": self._rate_config(), "decay": self.decay, "momentum": self.momentum}


class Adagrad(Optimizer):
    name = "adagrad"
    state_names = ("cache",)
    update_kernel = "adagrad_update"
    hyperparameters = ("epsilon",)

    def __init__(self, learning_rate=1.0, decay=0.0, epsilon=1e-7):
        super().__init__(learning_rate, decay)
        self.epsilon = check_learning_rate("epsilon", epsilon)

    def update(self, param):
        self.backend.adagrad_update(param.value, param.grad, param.state["cache"],
                                    self.current_learning_rate, self.epsilon)

    def config(self):
        return {"name": self.name, "learning_rate": self._rate_config(), "decay": self.decay, "epsilon": self.epsilon}


class RMSprop(Optimizer):
    name = "rmsprop"
    state_names = ("cache",)
    update_kernel = "rmsprop_update"
    hyperparameters = ("rho", "epsilon")

    def __init__(self, learning_rate=0.001, decay=0.0, epsilon=1e-7, rho=0.9):
        super().__init__(learning_rate, decay)
        self.epsilon = check_learning_rate("epsilon", epsilon)
        self.rho = check_fraction("rho", rho)

    def update(self, param):
        self.backend.rmsprop_update(param.value, param.grad, param.state["cache"],
                                    self.current_learning_rate, self.rho, self.epsilon)

    def config(self):
        return {"name": self.name, "learning_rate": self._rate_config(), "decay": self.decay,
                "epsilon": self.epsilon, "rho": self.rho}


class Adam(Optimizer):
    name = "adam"
    state_names = ("m", "v")
    update_kernel = "adam_update"
    hyperparameters = ("beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=0.001, decay=0.0, epsilon=1e-7, beta_1=0.9, beta_2=0.999):
        super().__init__(learning_rate, decay)
        self.epsilon = check_learning_rate("epsilon", epsilon)
        self.beta_1 = check_fraction("beta_1", beta_1)
        self.beta_2 = check_fraction("beta_2", beta_2)

    def update(self, param):
        self.backend.adam_update(param.value, param.grad, param.state["m"], param.state["v"],
                                 self.current_learning_rate, self.beta_1, self.beta_2, self.epsilon,
                                 self.iterations + 1)

    def config(self):
        return {"name": self.name, "learning_rate": self._rate_config(), "decay": self.decay,
                "epsilon": self.epsilon, "beta_1": self.beta_1, "beta_2": self.beta_2}


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adagrad, RMSprop, Adam)}


def get_optimizer(optimizer) -> Optimizer:
    """An optimizer from an instance, a class or a name (with the book's defaults)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        return optimizer()
    return OPTIMIZERS[check_choice("optimizer", optimizer, tuple(OPTIMIZERS))]()


def optimizer_from_config(config: dict) -> Optimizer:
    config = dict(config)
    if isinstance(config.get("learning_rate"), dict):
        config["learning_rate"] = schedule_from_config(config["learning_rate"])
    return OPTIMIZERS[check_choice("optimizer", config.pop("name"), tuple(OPTIMIZERS))](**config)
