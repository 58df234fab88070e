"Data helpers: Oxford PETS, Fashion-MNIST, and the offline EfficientNet-Lite0 backbone"
