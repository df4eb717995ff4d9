"""The paper's experiments, live: branching from a shared x_t (Fig. 7) and interpolating in x_t (Figs. 8-9)."""
