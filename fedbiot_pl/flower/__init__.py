"""Running fedbiot-pl on Flower (flwr 1.41): apps, wire format, client model, local engine."""
