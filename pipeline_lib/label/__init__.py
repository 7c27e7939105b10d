"""The labelling loop: what advise suggests goes to Label Studio (push), the answers come back as a
versioned labels file (pull) that ingest applies, and the next run says what the labels bought.
Imports neither Prefect nor DVC."""
