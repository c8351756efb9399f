/**
 * ESLint (flat config): typescript-eslint's recommended + type-checked rules over src/ and
 * test/, ESLint's recommended rules over the .mjs scripts, and the structure rules of src/
 * (file and function length, no console in the library, no format-name comparison outside
 * src/formats/) that test/unit/structure.test.ts used to check by hand. Run by `npm run
 * lint` (scripts/test.sh, before the build); docs/development.md has the why of each
 * choice. Only correctness rules: no stylistic rule, so code that type-checks and follows
 * the structure rules passes.
 */
import { createRequire } from 'node:module';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

// @eslint/js (the `eslint:recommended` set) is a dependency of eslint itself: resolve it
// from there rather than relying on npm's hoisting of a package we do not declare.
const js = createRequire(import.meta.resolve('eslint'))('@eslint/js');

// The scripts run on Node: every global of the Node running ESLint is one they may use.
const nodeGlobals = Object.fromEntries(Object.getOwnPropertyNames(globalThis).map((name) => [name, 'readonly']));

/**
 * Format names compared as literals (`=== 'cow'`, `case 'add-cow':`): outside src/formats/
 * format knowledge goes through the registry (issue 9), so a comparison is a leak.
 */
const FORMAT_NAME = '/^(raw|cow|add-cow|s3)$/';
const formatNameComparison = {
  selector: `:matches(BinaryExpression[operator=/^[!=]==?$/] > Literal[value=${FORMAT_NAME}], SwitchCase > Literal.test[value=${FORMAT_NAME}])`,
  message: 'Compares a format name outside src/formats/: ask the format registry (src/formats/registry.ts) instead.',
};

export default defineConfig(
  { ignores: ['dist/', 'dist-check/', 'build/', 'node_modules/', 'coverage/'] },
  { linterOptions: { reportUnusedDisableDirectives: 'error' } },

  {
    files: ['**/*.ts'],
    extends: [js.configs.recommended, ...tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      // One program from tsconfig.json (src/, test/, vitest.config.ts) for every file:
      // measured about 15 % less CPU than `projectService: true` here (docs/development.md).
      parserOptions: { project: './tsconfig.json', tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // `_`-prefixed names are deliberate (a callback's unused parameter, a destructured
      // field left out), as tsc's noUnusedParameters already allows.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true }],
      // `xs[i]!` is written on purpose (about 340 times): the code treats an indexed read as
      // possibly undefined, as noUncheckedIndexedAccess would, and says where it knows
      // better. Without that tsconfig flag this rule calls every such `!` unnecessary.
      '@typescript-eslint/no-unnecessary-type-assertion': 'off',
      // `async` without `await` is deliberate: it makes a synchronous throw (a read-only
      // device's write, a bad option) a rejected promise, which is what callers handle.
      '@typescript-eslint/require-await': 'off',
      // Rejecting with a caught `unknown` passes the original failure on unchanged.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
      // `cond ? a() : b()` and `x && f()` as statements call something: not dead code.
      '@typescript-eslint/no-unused-expressions': ['error', { allowTernary: true, allowShortCircuit: true }],
    },
  },

  // Tests read JSON that real processes print (`--json`, qemu-img, python3-libnbd,
  // pino log lines) and assert on its fields: that is `any` on purpose, and the assertions
  // are the check. Promise rules stay on: a floating promise in a test hides a failure.
  {
    files: ['test/**/*.ts', 'vitest.config.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      // String() of such a JSON field (or of a caught error) builds an assertion message.
      '@typescript-eslint/no-base-to-string': 'off',
    },
  },

  // The library and CLI: the structure rules (limits from issue 9).
  {
    files: ['src/**/*.ts'],
    rules: {
      'max-lines': ['error', { max: 400, skipBlankLines: false, skipComments: false }],
      'max-lines-per-function': ['error', { max: 60, skipBlankLines: false, skipComments: false, IIFEs: true }],
      'no-restricted-syntax': ['error', formatNameComparison],
      // Library code logs through the logger it is given; only the CLI owns the console.
      'no-console': 'error',
    },
  },
  { files: ['src/formats/**/*.ts'], rules: { 'no-restricted-syntax': 'off' } },
  { files: ['src/cli/**/*.ts'], rules: { 'no-console': 'off' } },

  {
    files: ['scripts/**/*.mjs', 'test/**/*.mjs'],
    extends: [js.configs.recommended],
    languageOptions: { globals: nodeGlobals },
    rules: { 'no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }] },
  },
  {
    files: ['*.js', '*.cjs'],
    extends: [js.configs.recommended],
    languageOptions: { globals: { ...nodeGlobals, module: 'writable', require: 'readonly' } },
  },
  { files: ['*.cjs'], languageOptions: { sourceType: 'commonjs' } },

  // Everywhere: `catch {}` around a best-effort kill or unlink says "already gone is fine".
  { rules: { 'no-empty': ['error', { allowEmptyCatch: true }] } },
);
