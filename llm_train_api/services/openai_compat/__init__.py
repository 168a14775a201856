"""The OpenAI-compatible fine-tuning API's translations, minus HTTP: ids and model names
(`names`), statuses (`statuses`), hyperparameters and methods (`hyperparams`), files as
datasets (`files`), and the objects OpenAI's SDK parses (`objects`). The views are in
`llm_train_api.api.openai`."""
