#!/usr/bin/env python3
"""Why tlkit's in-graph epoch loops over an iterator, or over its held features: one epoch of the same optimizer
step written four ways, timed side by side in one process.

    python benchmarks/training_loop.py [--rounds 5]

- ``dataset loop``: ``for x, y in dataset`` inside ``tf.function`` (AutoGraph makes it a tf.data reduction);
- ``iterator loop``: ``for x, y in iter(dataset)`` inside ``tf.function`` (a while loop; what
  :class:`tlkit.training.loop.Loop` does);
- ``python loop``: a Python loop calling the traced step once per batch;
- ``gather loop``: a while loop over batch starts inside ``tf.function`` that gathers each batch from the tensors
  (what the loop does with features held in the graph, ``HeldBatches``).

Two workloads: the top of MobileNetV2 0.35 above ``block_13_expand`` at 128 px (the fine-tuning stage on cached
features; random weights, 96 images of 8x8x32, batch 32) and a dense head on 1,280 pooled features (the head
stage; 9,600 rows, batch 32). Every form but the gather loop reads batches that tf.data gathers from the same tensors.
Prints the median seconds per epoch of each form and the ratios.
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def workloads():
    import keras
    import tensorflow as tf

    base = keras.applications.MobileNetV2(input_shape=(128, 128, 3), alpha=0.35, include_top=False, weights=None)
    cut = base.get_layer("block_13_expand").input
    top = keras.Model(cut, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(base.output)))
    inputs = keras.Input((1280,))
    head = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    for name, model, rows in (("fine-tuning top", top, 96), ("dense head", head, 9600)):
        x = tf.random.normal((rows, *model.input.shape[1:]))
        y = tf.random.uniform((rows,), 0, 5, tf.int32)
        yield name, model, x, y


def forms(model, x, y):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(1e-5)
    optimizer.build(model.trainable_variables)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        optimizer.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)
        return value

    traced_step = tf.function(step)

    @tf.function
    def dataset_loop(batches):
        total = tf.zeros(())
        for x, y in batches:
            total += step(x, y)
        return total

    @tf.function
    def iterator_loop(batches):
        total = tf.zeros(())
        for x, y in iter(batches):
            total += step(x, y)
        return total

    def python_loop(batches):
        for x, y in batches:
            traced_step(x, y)

    @tf.function
    def gather_loop(x, y, order):
        total = tf.zeros(())
        for start in tf.range(0, tf.shape(order)[0], 32):
            rows = order[start:start + 32]
            total += step(tf.gather(x, rows), tf.gather(y, rows))
        return total

    order = tf.range(len(y))
    batches = tf.data.Dataset.from_tensor_slices((order, y)).batch(32).map(lambda rows, labels: (tf.gather(x, rows),
                                                                                                  labels))
    return {"dataset loop": lambda: dataset_loop(batches), "iterator loop": lambda: iterator_loop(batches),
            "python loop": lambda: python_loop(batches), "gather loop": lambda: gather_loop(x, y, order)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name, model, x, y in workloads():
        epochs = forms(model, x, y)
        for epoch in epochs.values():
            epoch()  # trace
        seconds = {form: [] for form in epochs}
        for _ in range(args.rounds):  # the forms alternate, so load on the machine hits them alike
            for form, epoch in epochs.items():
                started = time.perf_counter()
                epoch()
                seconds[form].append(time.perf_counter() - started)
        medians = {form: statistics.median(s) for form, s in seconds.items()}
        print(f"{name}: " + ", ".join(f"{form} {m:.3f} s" for form, m in medians.items()))
        print(f"  dataset loop / iterator loop {medians['dataset loop'] / medians['iterator loop']:.2f}x, "
              f"python loop / iterator loop {medians['python loop'] / medians['iterator loop']:.2f}x, "
              f"iterator loop / gather loop {medians['iterator loop'] / medians['gather loop']:.2f}x")


if __name__ == "__main__":
    main()
