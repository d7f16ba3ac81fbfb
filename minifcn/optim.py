"""Stochastic gradient descent with momentum, weight decay and parameter groups."""


class SGD:
    """v <- momentum * v + (grad + weight_decay * p);  p <- p - lr * v.

    ``params`` is an iterable of Parameters, or of dicts ``{"params": [...],
    "lr": ..., "weight_decay": ...}`` (groups), as the paper's recipe needs
    biases at twice the learning rate and without decay. Frozen parameters
    (requires_grad False) are never updated.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            group = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, **group}
            group["params"] = [p for p in group["params"] if p.requires_grad]
            self.param_groups.append(group)
        self.velocity = [[None] * len(g["params"]) for g in self.param_groups]

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        for group, velocities in zip(self.param_groups, self.velocity):
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                g = p.grad + group["weight_decay"] * p.data if group["weight_decay"] else p.grad
                if group["momentum"]:
                    v = velocities[i]
                    g = velocities[i] = g.copy() if v is None else group["momentum"] * v + g
                p.data -= (group["lr"] * g).astype(p.dtype, copy=False)

    def state_dict(self):
        """Momentum buffers by flat index (None stays absent) and each group's lr."""
        state = {f"lr/{k}": g["lr"] for k, g in enumerate(self.param_groups)}
        for k, velocities in enumerate(self.velocity):
            for i, v in enumerate(velocities):
                if v is not None:
                    state[f"velocity/{k}/{i}"] = v
        return state

    def load_state_dict(self, state):
        for key, value in state.items():
            kind, *index = key.split("/")
            if kind == "lr":
                self.param_groups[int(index[0])]["lr"] = float(value)
            else:
                self.velocity[int(index[0])][int(index[1])] = value.copy()
