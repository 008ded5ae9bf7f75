"""The families of embedded benchmark version 5, one module each: `generate(rng)` draws a row's (instruction,
input, output[, rationale]), the output one sample of the row's true answer distribution, and
`distribution(instruction, input)` builds that distribution (kdbench.data.distributions.AnswerDistribution) from
the prompt alone. kdbench.data.embedded draws the splits and dispatches by category."""
