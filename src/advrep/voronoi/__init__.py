"""voronoi: adversarial training with Voronoi constraints (PLANES, MNIST, CIFAR-10; Figures 1-5)."""
