"""Writes notebooks/*.ipynb (run from the repository root: python notebooks/make_notebooks.py)."""
import nbformat as nbf
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

nb = new_notebook()
nb.cells = [
    new_markdown_cell("# Getting started with shiftquant\n\nConvert a timm ResNet-18 to shift quantization, fine-tune it on "
                      "scikit-learn's digits while the slope eps goes from 1 to 0, export the hard model as a bundle, run "
                      "the bundle with the shift-add runtime, and compare it with PyTorch. Runs on a CPU in about a minute."),
    new_code_cell("import os\nimport numpy as np\nimport timm\nimport torch\nimport torch.nn.functional as F\n\n"
                  "import shiftquant as sq\nfrom shiftquant.data import DigitsDataModule\n\n"
                  "STEPS = int(os.environ.get('SHIFTQUANT_NB_STEPS', 150))  # the tests run fewer\n"
                  "N_RUNTIME = int(os.environ.get('SHIFTQUANT_NB_IMAGES', 360))\n"
                  "MODEL = os.environ.get('SHIFTQUANT_NB_MODEL', 'resnet18')  # any timm model name\ntorch.manual_seed(0)"),
    new_markdown_cell("## Data and a float model\n\nThe digits are 8x8 grey images. We train the float model briefly first "
                      "(with real use you would start from pretrained weights: `model.weights=PATH` in the CLI)."),
    new_code_cell("dm = DigitsDataModule(batch_size=64)\ndm.setup()\n"
                  "x_test = torch.stack([x for x, _ in dm.test_set]); y_test = torch.stack([y for _, y in dm.test_set])\n"
                  "model = timm.create_model(MODEL, pretrained=False, num_classes=10, in_chans=1)\n\n"
                  "def fit(model, steps, lr, slope=None):\n"
                  "    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)\n"
                  "    model.train(); step = 0\n"
                  "    while step < steps:\n"
                  "        for x, y in dm.train_dataloader():\n"
                  "            if slope is not None:\n"
                  "                sq.set_slope(model, slope(step / steps))\n"
                  "            loss = F.cross_entropy(model(x), y)\n"
                  "            opt.zero_grad(); loss.backward(); opt.step(); step += 1\n"
                  "            if step == steps:\n"
                  "                break\n\n"
                  "def accuracy(model, eps=None):\n"
                  "    if eps is not None:\n"
                  "        sq.set_slope(model, eps)\n"
                  "    model.eval()\n"
                  "    with torch.no_grad():\n"
                  "        return (model(x_test).argmax(1) == y_test).float().mean().item()\n\n"
                  "fit(model, STEPS, lr=0.05)\nfloat_acc = accuracy(model)\nprint(f'float test accuracy {100 * float_acc:.1f}%')"),
    new_markdown_cell("## Convert\n\nThe `deploy` preset quantizes every Conv2d and Linear to shift weights (here 2 shift bits: "
                      "levels ±{1, 1/2, 1/4, 1/8} times a learned power-of-two scale per channel) and shift-coded inputs, "
                      "in a form the integer runtime reproduces exactly. `calibrate` sets the input scales from data."),
    new_code_cell("recipe = sq.QuantRecipe.preset('deploy', weight_shift_bits=2, act_shift_bits=2)\n"
                  "sq.quantize_model(model, recipe)\nsq.calibrate(model, dm.calibration_batches(4))\n"
                  "print(sq.summary(model, x_test[:1]))\n"
                  "print(f'eps = 1 (identity): {100 * accuracy(model, 1.0):.1f}%, eps = 0 (hard) before fine-tuning: '\n"
                  "      f'{100 * accuracy(model, 0.0):.1f}%')"),
    new_markdown_cell("## Fine-tune while eps decays\n\n`q_eps(x) = eps*x + (1-eps)*Q(x)`: eps goes from 1 to 1/128 "
                      "exponentially, then the hard model (eps = 0) is the one we deploy and report."),
    new_code_cell("fit(model, STEPS, lr=0.01, slope=lambda t: (1 / 128) ** t)\n"
                  "relaxed = accuracy(model, 1 / 128)\nhard = accuracy(model, 0.0)\n"
                  "print(f'float {100 * float_acc:.1f}% | relaxed (eps = 1/128) {100 * relaxed:.1f}% | '\n"
                  "      f'hard (eps = 0) {100 * hard:.1f}%')"),
    new_markdown_cell("## Export and run the bundle\n\nThe bundle holds bit-packed 3-bit codes; the runtime computes every "
                      "quantized layer with shifts and adds into an integer accumulator."),
    new_code_cell("rt = sq.export(model, 'digits.sqb', example_input=x_test[:1])\n"
                  "x_some, y_some = x_test[:N_RUNTIME], y_test[:N_RUNTIME]  # the reference runtime is slow\n"
                  "logits = rt.run(x_some.numpy())\n"
                  "with torch.no_grad():\n    reference = model(x_some).numpy()\n"
                  "print(f'bundle {os.path.getsize(\"digits.sqb\"):,} bytes, exact parity promised: {rt.manifest[\"exact\"]}')\n"
                  "print('runtime == PyTorch, bit for bit:', np.array_equal(logits, reference))\n"
                  "print(f'runtime top-1 on {len(y_some)} test images {100 * (logits.argmax(1) == y_some.numpy()).mean():.1f}%')\n"
                  "assert np.array_equal(logits, reference)\nos.remove('digits.sqb')"),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/01_getting_started.ipynb")

nb = new_notebook()
nb.cells = [
    new_markdown_cell("# Results\n\nLoads the committed result files of the accuracy protocol "
                      "(`benchmarks/accuracy.py --protocol fmnist-r20-v2`: every headline row over 3 seeds, mean ± sd) and draws the tables and plots of BENCHMARKS.md. "
                      "Every accuracy is the hard (eps = 0) one unless a column says otherwise."),
    new_code_cell("import os, sys\nfrom pathlib import Path\n\n"
                  "ROOT = Path(os.environ.get('SHIFTQUANT_ROOT', Path.cwd().parent if Path.cwd().name == 'notebooks' else Path.cwd()))\n"
                  "sys.path.insert(0, str(ROOT / 'benchmarks'))\nimport report\n\n"
                  "RESULTS = Path(os.environ.get('SHIFTQUANT_RESULTS', ROOT / 'benchmarks' / 'results' / 'fmnist-r20-v2'))\n"
                  "results = report.load(RESULTS)\nprint(sorted(results))"),
    new_code_cell("from IPython.display import Markdown, Image, display\n"
                  "protocol = report.json.loads((RESULTS / 'protocol.json').read_text()) if (RESULTS / 'protocol.json').exists() else {}\n"
                  "display(Markdown(report.tables(results, protocol)))"),
    new_code_cell("for path in report.plots(results, RESULTS):\n    display(Image(filename=str(path)))"),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/02_results.ipynb")
