from llm_train_api.cli.main import main

main()
